"""``python -m bench``: run the benchmark suite and write ``bench.json`` and ``bench.md``.

Each benchmark runs its contenders side by side in this one process run (scaling starts one
subprocess per cohort size to measure each size's peak memory on its own) and reports medians
over repeats and ratios. Results go to ``DIR/bench.json`` (the rows and a ``machine`` block) and
``DIR/bench.md`` (one Markdown table per benchmark under a machine header), rewritten after each
benchmark so a long run that is interrupted keeps what it finished; the Markdown is printed at
the end. A benchmark that fails is recorded as failed and the others still run (exit status 1).

    python -m bench --quick                       # smoke sizes, about 1-2 minutes on 2 cores
    python -m bench                               # full sizes (scaling at 200 and 2000: long)
    python -m bench --only e2e n4 --out results/  # a subset
    python -m bench --only scaling --scaling-sizes 200,2000

Synthetic cohorts are synthesized once (untimed) into ``--cache`` (default ``DIR/cache``) and
reused by later runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from engine.cli import positive_int

from ._common import machine_info, machine_markdown, markdown_table

#: name -> module with ``run(quick: bool) -> list[dict]``, in the order the suite runs them.
BENCHES: dict[str, str | Callable[..., list[dict]]] = {
    "fits": "bench.fits",
    "e2e": "bench.e2e",
    "n4": "bench.n4",
    "segmentation": "bench.segmentation",
    "synth_time": "bench.synth_time",
    "scaling": "bench.scaling",
    "qa": "bench.qa",
    "export": "bench.export",
    "study": "bench.study",
}


def _resolve(target) -> tuple[Callable[..., list[dict]], str]:
    """(run function, one-line description) of a registry entry."""
    if callable(target):
        doc = target.__doc__ or ""
        return target, doc.strip().splitlines()[0] if doc.strip() else ""
    module = importlib.import_module(target)
    doc = (module.__doc__ or "").strip()
    return module.run, doc.splitlines()[0] if doc else ""


def _call(run: Callable[..., list[dict]], quick: bool, options: dict) -> list[dict]:
    """Call ``run(quick)`` with the options its signature accepts (``fits`` takes none)."""
    accepted = inspect.signature(run).parameters
    return run(quick=quick, **{k: v for k, v in options.items() if k in accepted and v is not None})


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 200,2000, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"cohort sizes must be positive integers, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description="sarco-engine benchmark suite",
                                     epilog="Speed lives here, never in a timed test.")
    parser.add_argument("--quick", action="store_true", help="smoke sizes (about 1-2 minutes in all on 2 cores)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(names)})")
    parser.add_argument("--out", type=Path, default=Path("bench-results"),
                        help="folder for bench.json and bench.md (default ./bench-results)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the synthetic cohorts, reused between runs (default OUT/cache)")
    parser.add_argument("--scaling-sizes", type=_sizes, default=None,
                        help="cohort sizes of the scaling benchmark (default 200,2000; quick 6,12)")
    parser.add_argument("--scaling-workers", type=int, default=None,
                        help="Dask workers of the scaling runs (default: usable cores)")
    parser.add_argument("--scaling-scheduler", default=None,
                        help="tcp://HOST:PORT of an existing scheduler, or 'inline' (default: a local cluster)")
    parser.add_argument("--scaling-backend", default="cpu", choices=("cpu", "gpu", "auto"),
                        help="backend of the scaling runs (default cpu)")
    parser.add_argument("--export-patients", type=positive_int, default=None,
                        help="cohort size of the export benchmark (default 200; quick 3)")
    parser.add_argument("--export-size", choices=("small", "clinical"), default="small",
                        help="synthetic CT of the export benchmark: small (256x256, default) or clinical (512x512)")
    return parser.parse_args(argv)


def render_markdown(report: dict, descriptions: dict[str, str]) -> str:
    """bench.md: machine header, then one table per benchmark in run order."""
    mode = "quick (smoke sizes: not the figures to quote)" if report["quick"] else "full"
    parts = ["# sarco-engine benchmarks", "", f"Mode: {mode}.", "", "## Machine", "",
             machine_markdown(report["machine"])]
    for name, status in report["benches"].items():
        parts += ["", f"## {name}", ""]
        if descriptions.get(name):
            parts += [descriptions[name], ""]
        parts.append(f"Ran in {status['wall_s']:.1f} s.")
        if status.get("error"):
            parts += ["", f"**Failed**: {status['error']}"]
        rows = [{k: v for k, v in row.items() if k != "bench"} for row in report["rows"] if row.get("bench") == name]
        if rows:
            parts += ["", markdown_table(rows)]
    return "\n".join(parts) + "\n"


def _write(out_dir: Path, report: dict, descriptions: dict[str, str]) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report, descriptions)
    from engine.runfolder.outputs import write_text  # the engine's one atomic writer

    for name, text in (("bench.json", json.dumps(report, indent=2, default=str) + "\n"), ("bench.md", markdown)):
        write_text(out_dir / name, text)
    return markdown


def main(argv: list[str] | None = None) -> int:
    names = list(BENCHES)
    args = parse_args(argv, names)
    selected = [n for n in names if args.only is None or n in args.only]
    cache_dir = args.cache or args.out / "cache"
    options = {
        "scaling": {"cache_dir": cache_dir, "sizes": args.scaling_sizes, "workers": args.scaling_workers,
                    "scheduler": args.scaling_scheduler, "backend": args.scaling_backend},
        "export": {"cache_dir": cache_dir, "n_patients": args.export_patients, "size": args.export_size},
    }
    report = {"machine": machine_info(), "quick": args.quick, "argv": sys.argv[1:] if argv is None else argv,
              "benches": {}, "rows": []}
    descriptions: dict[str, str] = {}
    failed = False
    markdown = ""
    for name in selected:
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        status: dict = {}
        try:
            run, descriptions[name] = _resolve(BENCHES[name])
            rows = _call(run, args.quick, options.get(name, {"cache_dir": cache_dir}))
            report["rows"].extend({"bench": name, **row} for row in rows)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not lose the others' results
            failed = True
            traceback.print_exc()
            status["error"] = f"{type(exc).__name__}: {exc}"
        status["wall_s"] = time.perf_counter() - start
        report["benches"][name] = status
        markdown = _write(args.out, report, descriptions)
    print(markdown)
    print(f"results: {(args.out / 'bench.json').resolve()}, {(args.out / 'bench.md').resolve()}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
