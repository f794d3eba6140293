"""``sarco``: the command line (METHOD.md section 8). Thin: parse, validate, call the library.

Exit status: 0 when the command completed (a run with failed patients still completed; they are
in errors.csv), 1 when it could not (``--strict`` failure, nothing to fit, ...), 2 for a bad
config, manifest or argument (nothing was started).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, ManifestError, SarcoError


def _version_text() -> str:
    from .backend import gpu_status

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


def _summary(result, out_dir: Path) -> str:
    lines = [f"{result.n_patients} patients, backend {result.backend}, "
             f"{result.n_failed} failed patient-modalit{'y' if result.n_failed == 1 else 'ies'} (errors.csv)"]
    for modality, fit in result.thresholds.get("modalities", {}).items():
        parts = ", ".join(f"{m} {v['threshold']:.1f}" for m, v in fit["methods"].items())
        lines.append(f"{modality.upper()} thresholds ({fit['unit']}): {parts}  [{fit['n_patients']} training patients]")
    lines.extend(f"note: {n}" for n in result.notes)
    lines.append(f"results: {out_dir.resolve()}")
    if (out_dir / "report.html").exists():
        lines.append(f"report:  {(out_dir / 'report.html').resolve()}")
    return "\n".join(lines)


def cmd_run(args) -> int:
    from .config import load_config
    from .pipeline import run

    cfg = load_config(args.config, _overrides(args))
    result = run(args.manifest, out_dir=args.out, config=cfg, force=args.force)
    print(_summary(result, Path(args.out)))
    return 0


def cmd_apply(args) -> int:
    from .pipeline import apply

    result = apply(args.model, args.manifest, out_dir=args.out, overrides=_overrides(args), force=args.force)
    print(_summary(result, Path(args.out)))
    return 0


def cmd_synth(args) -> int:
    from .synth import synthesize_cohort

    manifest = synthesize_cohort(args.out, n_patients=args.patients, seed=args.seed, size=args.size,
                                 workers=args.workers)
    print(f"synthetic cohort of {args.patients} patients: {Path(manifest).resolve()}")
    return 0


def cmd_demo(args) -> int:
    from .config import load_config
    from .pipeline import run
    from .synth import synthesize_cohort

    out = Path(args.out)
    print(f"synthesizing {args.patients} patients (small size) into {out / 'cohort'} ...", file=sys.stderr)
    manifest = synthesize_cohort(out / "cohort", n_patients=args.patients, seed=args.seed, size="small",
                                 workers=args.workers or 2)
    cfg = load_config(None, _overrides(args))
    result = run(manifest, out_dir=out / "run", config=cfg, force=False)
    print(_summary(result, out / "run"))
    print(f"ground truth of the synthetic cohort: {(out / 'cohort' / 'truth.csv').resolve()}")
    return 0


def cmd_inspect(args) -> int:
    from .io import format_inspection, inspect_path

    info = inspect_path(args.path)
    print(json.dumps(info, indent=2, default=str) if args.json else format_inspection(info))
    return 0


def cmd_report(args) -> int:
    from .report import render_report

    path = render_report(Path(args.run_dir))
    print(f"report: {Path(path).resolve()}")
    return 0


def cmd_stats(args) -> int:
    from .stats.cli import run_command

    return run_command(args)


def build_parser() -> argparse.ArgumentParser:
    from .stats.cli import register as register_stats
    from .study import register_cli as register_study

    parser = argparse.ArgumentParser(prog="sarco", description="Lumbar CT/MRI -> cohort-level muscle/fat habitats "
                                     "-> sarcopenia prediction (Otsu, K-means, GMM).")
    parser.add_argument("--version", action="store_true", help="print the version and the backends available")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to the terminal")
    sub = parser.add_subparsers(dest="command")

    def cluster_options(p):
        p.add_argument("--backend", choices=["cpu", "gpu", "auto"], help="array backend (default: config, auto)")
        p.add_argument("--scheduler", help="tcp://HOST:PORT of an existing Dask scheduler, or 'inline' (no cluster)")
        p.add_argument("--workers", type=int, help="local Dask workers (default: one per core)")
        p.add_argument("--strict", action="store_true", help="any patient failure stops the run")
        p.add_argument("--force", action="store_true", help="recompute everything, ignoring the cache")
        p.add_argument("--data-root", help="refuse manifest paths outside this folder")

    p = sub.add_parser("demo", help="synthesize a small cohort and run the whole study on it")
    p.add_argument("--out", default="sarco-demo", help="output folder (default: ./sarco-demo)")
    p.add_argument("--patients", type=int, default=60, help="cohort size (default: 60)")
    p.add_argument("--seed", type=int, default=0)
    cluster_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("synth", help="write a synthetic cohort (DICOM, masks, manifest, truth)")
    p.add_argument("out")
    p.add_argument("--patients", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["small", "clinical"], default="clinical")
    p.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("inspect", help="what the engine sees in a series, file or mask")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run the study on a cohort manifest")
    p.add_argument("--manifest", required=True)
    p.add_argument("--config", help="YAML config (keys not given take the defaults of configs/default.yaml)")
    p.add_argument("--out", required=True)
    cluster_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("apply", help="score new patients with a frozen model.json (no refit)")
    p.add_argument("--model", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    cluster_options(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("report", help="re-render report.html from a run folder")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("stats", help="stand-alone statistics on a CSV")
    stats = p.add_subparsers(dest="stats_command", required=True)
    roc = stats.add_parser("roc", help="AUC with DeLong CI, Youden cut-off, sensitivity, specificity")
    roc.add_argument("--csv", required=True)
    roc.add_argument("--label", required=True)
    roc.add_argument("--score", required=True)
    roc.add_argument("--json", action="store_true")
    icc = stats.add_parser("icc", help="intraclass correlation (Shrout & Fleiss) from a long table")
    icc.add_argument("--csv", required=True)
    icc.add_argument("--target", required=True)
    icc.add_argument("--rater", required=True)
    icc.add_argument("--value", required=True)
    icc.add_argument("--json", action="store_true")
    register_stats(stats)
    p.set_defaults(func=cmd_stats)
    register_study(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(_version_text())
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ManifestError) as exc:
        print(f"sarco: {exc}", file=sys.stderr)
        return 2
    except SarcoError as exc:
        print(f"sarco: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sarco: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
