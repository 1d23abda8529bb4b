"""What every study script shares: run ``unroll compare``, keep its outputs under
``experiments/results/<study>/``, and write the study's table to its ``results.md`` there,
which the docs' results page includes (``docs/results.md``), so no number of a table is
typed by hand."""

from __future__ import annotations

import argparse
import json
import os
import shutil

from unroll.comparison import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_dir(study: str) -> str:
    path = os.path.join(ROOT, "experiments", "results", study)
    os.makedirs(path, exist_ok=True)
    return path


def parse_args(doc: str, extra=None) -> argparse.Namespace:
    """``--seeds``, ``--steps``, ``--no-progress``, ``--table-only`` (and ``extra(parser)``'s flags)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild the table from the saved summary.json, without running",
    )
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def command_line(script: str, args: argparse.Namespace, keys=("seeds", "steps")) -> str:
    return f"python experiments/{script}" + "".join(f" --{k} {getattr(args, k)}" for k in keys if getattr(args, k))


def run_compare(study: str, task: str, args: argparse.Namespace, command: str, **kwargs) -> dict:
    """``compare(task, ...)``; copies summary.json, metrics.csv and curves.png to the study's folder
    (with ``--table-only``, reads the saved summary.json instead)."""
    if args.table_only:
        with open(os.path.join(results_dir(study), "summary.json")) as f:
            return json.load(f)
    out_dir, summary = compare(
        task, seeds=args.seeds, steps=args.steps, command=command, progress=not args.no_progress, **kwargs
    )
    for name in ("summary.json", "metrics.csv", "curves.png"):
        shutil.copy(os.path.join(out_dir, name), os.path.join(results_dir(study), name))
    return summary


def footer(summary: dict) -> str:
    return f"Command: `{summary['command']}`, jax {summary['versions']['jax']} on {summary['versions']['device']}."


def publish(study: str, text: str) -> None:
    """Writes the study's table to ``experiments/results/<study>/results.md`` (which
    ``docs/results.md`` includes) and prints it."""
    with open(os.path.join(results_dir(study), "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)


def summary_table(summary: dict, columns: list) -> str:
    """A markdown table, one row per estimator: ``columns`` is ``[(header, entry -> cell), ...]``."""
    lines = ["| estimator | " + " | ".join(h for h, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, entry in summary["estimators"].items():
        lines.append(f"| {name} | " + " | ".join(cell(entry) for _, cell in columns) + " |")
    return "\n".join(lines)


def mean_std(entry: dict, key: str, fmt: str = ".4f") -> str:
    value = entry[key]
    return f"{value['mean']:{fmt}} ± {value['std']:{fmt}}"
