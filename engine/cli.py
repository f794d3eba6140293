"""``sarco``: the command line (docs/method.md section 8). Thin: parse, validate, call the library.

Exit status: 0 when the command completed (a run with failed patients still completed; they are
in errors.csv), 1 when it could not (``--strict`` failure, nothing to fit, an input ``sarco
inspect`` cannot read as an image, an internal error), 2 for a user mistake: a bad config,
manifest, argument, number, or a file or folder that is missing or not what the command needs
(nothing was started). Every error is one line on stderr naming what to fix; a traceback is
shown only for an internal error (a bug), and only with ``-v``.

:func:`main` is the one error boundary: a subcommand only parses its arguments and calls the
library, whose errors (the :class:`~engine.errors.SarcoError` family) carry the message.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from engine import __version__
from engine.batch.backend import gpu_status, resolve_backend
from engine.batch.executors import progress_reporter, quiet_dask
from engine.contract import MODALITIES, NOTE_RECORD, QA_DIR, QA_INDEX, QA_PANELS_JSON, REPORT_HTML
from engine.errors import ConfigError, ManifestError, SarcoError, UsageError
from engine.measure.methods import method_names
from engine.pacs.dimse import check_calling_aet, parse_address

# Errors that are the user's to fix (exit 2) and errors that mean the command could not
# complete (exit 1); anything else reaching main() is a bug.
USER_ERRORS = (ConfigError, ManifestError, UsageError)
# A path named on the command line (or a folder the command must write) cannot be used.
PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _version_text() -> str:
    available, description = gpu_status()
    gpu = f"gpu ({description})" if available else f"gpu unavailable: {description}"
    return f"sarco-engine {__version__}\nbackends: cpu, {gpu}"


def _overrides(args) -> dict:
    run = {}
    for name in ("backend", "scheduler", "workers"):
        value = getattr(args, name, None)
        if value is not None:
            run[name] = value
    if getattr(args, "strict", False):
        run["strict"] = True
    overrides = {"run": run} if run else {}
    if getattr(args, "data_root", None):
        overrides["io"] = {"data_root": args.data_root}
    return overrides


#: Failures shown on the terminal after a run; the rest are in errors.csv.
SHOWN_FAILURES = 5


def _failure_lines(errors) -> list[str]:
    """The first :data:`SHOWN_FAILURES` rows of errors.csv, one line each (patient, modality, stage, reason)."""
    rows = errors.to_dict(orient="records")
    lines = [f"  {r['patient_id']} {str(r['modality']).upper()} [{r['stage']}]: {_one_line(r['reason'])}"
             for r in rows[:SHOWN_FAILURES]]
    if len(rows) > SHOWN_FAILURES:
        lines.append(f"  ... {len(rows) - SHOWN_FAILURES} more in errors.csv")
    return lines


def _canonical(entries: dict, order) -> list[tuple]:
    """``entries`` items in the contract's ``order``; names it does not know after them, sorted."""
    rank = {name: i for i, name in enumerate(order)}
    return sorted(entries.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _summary(result, out_dir: Path) -> str:
    lines = [f"{result.n_patients} patients, backend {result.backend}, "
             f"{result.n_failed} failed patient-modalit{'y' if result.n_failed == 1 else 'ies'} (errors.csv)"]
    lines.extend(_failure_lines(result.errors))
    for modality, fit in _canonical(result.thresholds.get("modalities", {}), MODALITIES):
        # canonical order, not the file's: model.json is written with sorted keys, so apply
        # printed fixed, gmm, kmeans, otsu where run printed otsu, kmeans, gmm, fixed (issue 21)
        parts = ", ".join(f"{m} {v['threshold']:.1f}" for m, v in _canonical(fit["methods"], method_names()))
        lines.append(f"{modality.upper()} thresholds ({fit['unit']}): {parts}  [{fit['n_patients']} training patients]")
    if result.reused:
        lines.append(f"rerun: {result.reused} series taken from the cache, {result.computed} computed")
    lines.extend(f"note: {n}" for n in result.notes)
    lines.append(f"results: {out_dir.resolve()}")
    if (out_dir / REPORT_HTML).exists():
        lines.append(f"report:  {(out_dir / REPORT_HTML).resolve()}")
    if (out_dir / QA_DIR / QA_INDEX).exists():
        lines.append(f"QA:      {(out_dir / QA_DIR / QA_INDEX).resolve()}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.batch.pipeline import run
    from engine.config import load_config
    from engine.inputs.userfiles import check_output_folder, require_file, user_file

    check_output_folder(args.out)
    if args.config is not None:
        require_file(args.config, "config file")
    with user_file(args.config, "config file"):
        cfg = load_config(args.config, _overrides(args))
    result = run(args.manifest, out_dir=args.out, config=cfg, force=args.force)
    print(_summary(result, Path(args.out)))
    return batch_status(result)


def cmd_apply(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.batch.pipeline import apply
    from engine.inputs.userfiles import check_output_folder

    check_output_folder(args.out)
    result = apply(args.model, args.manifest, out_dir=args.out, overrides=_overrides(args), force=args.force)
    print(_summary(result, Path(args.out)))
    from engine.stats.cli import chance_text  # lazy: numpy/pandas; `sarco --help` and usage errors stay fast

    statistics = json.loads(Path(args.model).read_text(encoding="utf-8")).get("statistics") or {}
    for verdict, what in ((statistics.get("best_model"), "chosen model"),
                          (statistics.get("best_imaging"), "best imaging model")):
        line = chance_text(verdict, what)
        if line:
            print(line)
    return batch_status(result)


def batch_status(result) -> int:
    """The exit status ``run`` and ``apply`` share: 0 every patient done, 1 some failed (errors.csv says
    which; a cron job can tell a failed night from a good one), 2 a user mistake (raised before)."""
    return 1 if result.n_failed else 0


def cmd_synth(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.inputs.userfiles import check_output_folder
    from engine.synthetic import synthesize_cohort

    check_output_folder(args.out)
    manifest = synthesize_cohort(args.out, n_patients=args.patients, seed=args.seed, size=args.size,
                                 workers=args.workers, progress=progress_reporter("synth", "patients"))
    print(f"synthetic cohort of {args.patients} patients: {Path(manifest).resolve()}")
    return 0


def cmd_demo(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.batch.pipeline import run
    from engine.config import load_config
    from engine.inputs.userfiles import check_output_folder
    from engine.synthetic import synthesize_cohort

    out = check_output_folder(args.out)
    cfg = load_config(None, _overrides(args))
    if cfg.run.backend == "gpu":
        resolve_backend("gpu")  # without a GPU: refused before minutes of synthesis, not after
    print(f"synthesizing {args.patients} patients (small size) into {out / 'cohort'} ...", file=sys.stderr)
    manifest = synthesize_cohort(out / "cohort", n_patients=args.patients, seed=args.seed, size="small",
                                 workers=args.workers or 2, progress=progress_reporter("synth", "patients"))
    result = run(manifest, out_dir=out / "run", config=cfg, force=False)
    print(_summary(result, out / "run"))
    print(f"ground truth of the synthetic cohort: {(out / 'cohort' / 'truth.csv').resolve()}")
    return 0


def cmd_inspect(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.io import format_inspection, inspect_path

    info = inspect_path(args.path)
    print(json.dumps(info, indent=2, default=str) if args.json else format_inspection(info))
    return 1 if info.get("error") else 0  # scripts can tell an input the engine would refuse


def cmd_report(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.inputs.userfiles import require_run_folder
    from engine.report import render_report

    run_dir = require_run_folder(args.run_dir)
    sheet = None
    if (Path(run_dir) / QA_DIR / QA_PANELS_JSON).is_file():  # the QA sheet too, from the same published files
        # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
        from engine.qa import render_sheet

        sheet = render_sheet(run_dir)
    path = render_report(run_dir)
    print(f"report: {Path(path).resolve()}")
    if sheet is not None:
        print(f"QA:     {Path(sheet).resolve()}")
    return 0


#: ``sarco export``'s exit status when a destination went down (its breaker tripped): the rest for
#: it was not attempted; rerun the same command once it is back (it sends only what is missing).
EXIT_DESTINATION_DOWN = 3


def _pacs_settings(args):
    """The config's ``pacs`` group with ``--timeout``/``--connect-timeout`` over it (fetch, export)."""
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.config import load_config
    from engine.inputs.userfiles import require_file, user_file

    if args.config is not None:
        require_file(args.config, "config file")
    overrides = {k: v for k, v in (("timeout_s", args.timeout), ("connect_timeout_s", args.connect_timeout))
                 if v is not None}
    with user_file(args.config, "config file"):
        return load_config(args.config, {"pacs": overrides} if overrides else None).pacs


def cmd_export(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.exporters import export_run

    result = export_run(args.run_dir, dicom_dir=args.dicom, pacs=args.pacs, dicomweb=args.dicomweb,
                        objects=args.objects, calling_aet=args.aet, settings=_pacs_settings(args),
                        scheduler=args.scheduler, workers=args.workers, new_study=args.new_study,
                        manifest=args.manifest)
    for row in result.log.itertuples():
        if row.status not in ("written", "stored", "skipped", "not attempted"):
            print(f"patient {row.patient_id} ({row.modality}) {row.object.upper()} -> {row.destination}: "
                  f"{row.status}: {row.reason}", file=sys.stderr)
    for name, why in result.down.items():
        print(f"{name}: {why}; the rest for it was not attempted (rerun to send it)", file=sys.stderr)
    objects = ", ".join(o.upper() for o in args.objects)
    earlier = f" ({result.earlier} objects delivered by an earlier export, not sent again)" if result.earlier else ""
    print(f"exported {result.done} patient-modalit{'y' if result.done == 1 else 'ies'} ({objects}), "
          f"{result.failed} failed{earlier}; log: {result.log_paths[-1].resolve()}")
    if result.down:
        return EXIT_DESTINATION_DOWN
    return 1 if result.failed else 0


def cmd_fetch(args) -> int:
    from engine.pacs.fetch import (
        fetch,  # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    )

    result = fetch(args.pacs, args.out, manifest=args.manifest, studies=args.study or (), series=args.series or (),
                   query=args.query or (), calling_aet=args.aet, settings=_pacs_settings(args),
                   move_port=args.move_port)
    for problem in result.problems:
        print(problem, file=sys.stderr)
    if not result.fetched and not result.problems:
        print(f"nothing new: all {result.reused} series already in the cache; manifest: {result.manifest.resolve()}")
        return 0
    print(f"{result.fetched} series fetched, {result.reused} already in the cache, {len(result.problems)} problem(s); "
          f"manifest: {result.manifest.resolve()}")
    # 1: nothing to run (every request failed); requests that failed beside others leave their row without
    # an image, which run/apply count as that patient's failure
    return 1 if result.problems and not (result.fetched or result.reused) else 0


def cmd_stats(args) -> int:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.stats.cli import run_command

    return run_command(args)


SEED_HELP = "seed of the synthetic cohort (same seed: identical cohort; default: 0)"
JSON_HELP = "print JSON instead of text"
CSV_HELP = "input CSV (one row per patient)"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (its default prints the usage block first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (patients, workers)."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (seeds)."""
    return _whole_number(text, 0)


def port_number(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    value = _whole_number(text, 1)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {value}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a duration in seconds, > 0 (timeouts)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got '{text}'") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got '{text}'")
    return value


def scheduler_address(text: str) -> str:
    """argparse type: ``inline`` or a Dask scheduler address.

    See :func:`engine.inputs.userfiles.check_scheduler_address`.
    """
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.inputs.userfiles import check_scheduler_address

    try:
        return check_scheduler_address(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def pacs_address(text: str) -> str:
    """argparse type: ``AET@HOST:PORT`` (:func:`engine.pacs.dimse.parse_address`)."""
    try:
        parse_address(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def calling_aet(text: str) -> str:
    try:
        return check_calling_aet(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def export_objects(text: str) -> list[str]:
    """argparse type: a comma-separated subset of the exporters (``seg,sr,sc``)."""
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.exporters import EXPORTERS

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in EXPORTERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"'{text}': choose among {', '.join(EXPORTERS)}, comma-separated")
    return names


def build_parser() -> argparse.ArgumentParser:
    # lazy: each command imports its own modules: `sarco --help` and usage errors stay fast
    from engine.study import register_cli as register_study

    parser = _Parser(prog="sarco", description="Lumbar CT/MRI -> cohort-level muscle/fat habitats "
                                     "-> sarcopenia prediction (Otsu, K-means, GMM).")
    parser.add_argument("--version", action="store_true", help="print the version and the backends available")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also show the engine's INFO log (each stage, Dask's messages) on the terminal, "
                             "and the traceback of an internal error")
    sub = parser.add_subparsers(dest="command")
    _add_batch_commands(sub)
    _add_pacs_commands(sub)
    _add_stats_command(sub)
    register_study(sub)
    return parser


def _cluster_options(p) -> None:
    p.add_argument("--backend", choices=["cpu", "gpu", "auto"], help="array backend (default: config, auto)")
    p.add_argument("--scheduler", type=scheduler_address,
                   help="tcp://HOST:PORT of an existing Dask scheduler, or 'inline' (no cluster)")
    p.add_argument("--workers", type=positive_int, help="local Dask workers (default: one per core)")
    p.add_argument("--strict", action="store_true", help="any patient failure stops the run")
    p.add_argument("--force", action="store_true", help="recompute everything, ignoring the cache; also "
                   "overwrite a folder that holds a finished run of another manifest")
    p.add_argument("--data-root", help="refuse manifest paths outside this folder")


def _pacs_options(p) -> None:
    p.add_argument("--config", help="YAML config whose 'pacs' group sets the timeouts, the breaker and the "
                                    "associations (default: configs/default.yaml)")
    p.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                   help="longest wait for any one answer of the peer (default: config pacs.timeout_s, 30)")
    p.add_argument("--connect-timeout", type=positive_seconds, metavar="SECONDS",
                   help="longest wait for a TCP connection (default: config pacs.connect_timeout_s, 5)")


def _add_batch_commands(sub) -> None:
    """demo, synth, inspect, run, apply, report: the cohort's own commands."""
    p = sub.add_parser("demo", help="synthesize a small cohort and run the whole study on it")
    p.add_argument("--out", default="sarco-demo", help="output folder (default: ./sarco-demo)")
    p.add_argument("--patients", type=positive_int, default=60, help="cohort size (default: 60)")
    p.add_argument("--seed", type=non_negative_int, default=0, help=SEED_HELP)
    _cluster_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic cohort (DICOM, masks, manifest, truth)")
    p.add_argument("out", help="folder to write the cohort into (created)")
    p.add_argument("--patients", type=positive_int, required=True, help="cohort size")
    p.add_argument("--seed", type=non_negative_int, default=0, help=SEED_HELP)
    p.add_argument("--size", choices=["small", "clinical"], default="clinical",
                   help="clinical: 512 x 512 CT at ~0.7 mm (default); small: 256 x 256, for tests")
    p.add_argument("--workers", type=positive_int, default=1, help="processes (default: 1)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="what the engine sees in a series, file or mask")
    p.add_argument("path", help="a DICOM series folder, a DICOM file, a NIfTI/NRRD image or a mask")
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run the study on a cohort manifest")
    p.add_argument("--manifest", required=True, help="cohort CSV: one row per patient (README 'Inputs')")
    p.add_argument("--config", help="YAML config (keys not given take the defaults of configs/default.yaml)")
    p.add_argument("--out", required=True, help="run folder (created; a rerun into it resumes)")
    _cluster_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("apply", help="score new patients with a frozen model.json (no refit)")
    p.add_argument("--model", required=True, help="the model.json of a 'sarco run' folder")
    p.add_argument("--manifest", required=True, help="CSV of the patients to score (same columns as for run)")
    p.add_argument("--out", required=True, help="output folder (created; patients already done there are reused)")
    _cluster_options(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("report", help="re-render report.html from a run folder")
    p.add_argument("run_dir", help="the folder of a finished 'sarco run' or 'sarco study'")
    p.set_defaults(func=cmd_report)



def _add_pacs_commands(sub) -> None:
    """export and fetch: the PACS round trip."""
    p = sub.add_parser("export", help="results back to the PACS: DICOM-SEG, TID 1500 SR, QA capture "
                                      "in each source study")
    p.add_argument("run_dir", help="a finished run or apply folder")
    p.add_argument("--manifest", metavar="M", help="the manifest the run read: where its source series are")
    p.add_argument("--dicom", metavar="OUT_DIR", help="write the DICOM files here (outside the run folder)")
    p.add_argument("--pacs", metavar="AET@HOST:PORT", type=pacs_address, help="C-STORE them to this DICOM node")
    p.add_argument("--dicomweb", metavar="URL", help="STOW-RS them to this DICOMweb root (checked by QIDO)")
    p.add_argument("--objects", type=export_objects, default=["seg", "sr", "sc"],
                   help="which objects, comma-separated (default: seg,sr,sc)")
    p.add_argument("--aet", type=calling_aet, default="SARCO", help="our AE title (default: SARCO)")
    p.add_argument("--new-study", action="store_true",
                   help="a source without Study/Series Instance UID goes into a new study (with --dicom only)")
    _pacs_options(p)
    p.add_argument("--scheduler", type=scheduler_address,
                   help="where the objects are built: tcp://HOST:PORT of a Dask scheduler, or 'inline' "
                        "(default: a local cluster when there are enough series for its start to pay, 50 on 2 "
                        "cores; else this process)")
    p.add_argument("--workers", type=positive_int, help="local Dask workers building the objects (default: one "
                                                        "per core)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("fetch", help="retrieve series from a PACS by C-GET (or C-MOVE) into a local cache, and write "
                                     "a manifest to run")
    p.add_argument("--pacs", metavar="AET@HOST:PORT", type=pacs_address, required=True,
                   help="the DICOM node to C-FIND and C-GET from")
    p.add_argument("--out", required=True, help="the cache folder (series already there are not fetched again)")
    p.add_argument("--manifest", help="a manifest naming {ct,mri}_series_uid or {ct,mri}_study_uid per patient")
    p.add_argument("--study", action="append", metavar="UID", help="a StudyInstanceUID (repeatable)")
    p.add_argument("--series", action="append", metavar="UID", help="a SeriesInstanceUID (repeatable)")
    p.add_argument("--query", action="append", metavar="KEY=VALUE",
                   help="a C-FIND matching key at series level, e.g. Modality=CT or StudyDate=20260101-20260131 "
                        "(repeatable)")
    p.add_argument("--aet", type=calling_aet, default="SARCO", help="our AE title (default: SARCO)")
    p.add_argument("--move-port", type=port_number, metavar="PORT",
                   help="retrieve by C-MOVE to a storage SCP that fetch runs on this port (for a PACS that forbids "
                        "C-GET; the PACS must know --aet at this machine's address and PORT)")
    _pacs_options(p)
    p.set_defaults(func=cmd_fetch)



def _add_stats_command(sub) -> None:
    """sarco stats: stand-alone statistics on a CSV."""
    from engine.stats.cli import register as register_stats  # lazy: as build_parser's imports

    p = sub.add_parser("stats", help="stand-alone statistics on a CSV")
    stats = p.add_subparsers(dest="stats_command", required=True)
    roc = stats.add_parser("roc", help="AUC with DeLong CI, Youden cut-off, sensitivity, specificity")
    roc.add_argument("--csv", required=True, help=CSV_HELP)
    roc.add_argument("--label", required=True, help="0/1 outcome column")
    roc.add_argument("--score", required=True, help="score column (higher = more likely 1)")
    roc.add_argument("--json", action="store_true", help=JSON_HELP)
    icc = stats.add_parser("icc", help="intraclass correlation (Shrout & Fleiss) from a long table")
    icc.add_argument("--csv", required=True, help="long CSV: one row per target x rater")
    icc.add_argument("--target", required=True, help="column naming what was measured (a patient)")
    icc.add_argument("--rater", required=True, help="column naming who measured it")
    icc.add_argument("--value", required=True, help="column of the measurement")
    icc.add_argument("--json", action="store_true", help=JSON_HELP)
    register_stats(stats)
    p.set_defaults(func=cmd_stats)


def _not_a_note(record: logging.LogRecord) -> bool:
    """Terminal log filter: a note is printed once, in the command's summary (run.log keeps it)."""
    return not getattr(record, NOTE_RECORD, False)


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _say(message: str) -> None:
    print(f"sarco: {_one_line(message)}", file=sys.stderr)


def _keep_traceback(args) -> str:
    """Keep the traceback of an internal error: in the run's run.log if there is one, on stderr with -v."""
    text = traceback.format_exc()
    kept_in = None
    out = getattr(args, "out", None)
    for log in ([Path(out) / "run.log", Path(out) / "run" / "run.log"] if out else []):
        if log.is_file():
            try:
                with open(log, "a", encoding="utf-8") as handle:
                    handle.write(f"internal error:\n{text}")
                kept_in = log
            except OSError:
                pass
            break
    if getattr(args, "verbose", False):
        print(text, end="", file=sys.stderr)
        return "the traceback is above"
    return f"the traceback is in {kept_in}" if kept_in else "rerun as 'sarco -v ...' to see the traceback"


def _run_command(args) -> int:
    """The error boundary of every subcommand: one line on stderr and the exit status."""
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        _say(str(exc))
        return 2
    except SarcoError as exc:
        _say(str(exc))
        return 1
    except KeyboardInterrupt:
        _say("interrupted; rerun the same command to resume")
        return 130
    except BrokenPipeError:
        raise
    except PATH_ERRORS as exc:
        if getattr(args, "verbose", False):
            traceback.print_exc()
        reason = (exc.strerror or str(exc)).lower()
        _say(f"cannot use '{exc.filename}': {reason}" if exc.filename else str(exc))
        return 2
    except OSError as exc:
        # the system refused (a full disk, a lost network share, an unreachable scheduler): not
        # a mistake in the command and not a bug; exit 1 with the system's reason
        if getattr(args, "verbose", False):
            traceback.print_exc()
        _say(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else f"{type(exc).__name__}: {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - the last boundary: a bug is reported as one line, not a traceback
        where = _keep_traceback(args)
        _say(f"internal error (a bug in sarco-engine {__version__}; please report it): "
             f"{type(exc).__name__}: {_one_line(str(exc))}; {where}")
        return 1


def _dispatch(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_version_text())
        return 0
    if args.command is None:
        _say("no command given (see 'sarco --help' for the commands)")
        return 2
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # the engine logs INFO into run.log; the terminal shows it only with -v
        handler.addFilter(_not_a_note)  # a note is printed once, in the command's summary
    if args.command in ("export", "fetch") and not args.verbose:
        # pynetdicom logs every refused connection as ERROR; the per-patient line already says it
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
        logging.getLogger("retrying").setLevel(logging.CRITICAL)  # dicomweb_client logs each failed request
    if args.command in ("run", "apply", "demo"):
        quiet_dask(args.verbose)
    return _run_command(args)


def main(argv=None) -> int:
    """``sarco``: parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit status."""
    try:
        try:
            return _dispatch(argv)
        finally:
            sys.stdout.flush()  # a closed pipe surfaces here, not as a message at interpreter exit
    except BrokenPipeError:
        # The reader went away (`sarco inspect X | head -1`): end quietly. The recipe of the
        # Python docs (signal module, "Note on SIGPIPE"): point stdout at devnull so the
        # interpreter's final flush does not fail again, and exit 1.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a real file (a test's capture)
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
