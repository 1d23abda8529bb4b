"""What every study script shares: run ``unroll compare``, keep its outputs under
``experiments/results/<study>/``, and rewrite the README's results section between the
study's markers (``<!-- results:<study> -->`` ... ``<!-- /results:<study> -->``), so no
number in the README is typed by hand."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys

from unroll.comparison import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def results_dir(study: str) -> str:
    path = os.path.join(ROOT, "experiments", "results", study)
    os.makedirs(path, exist_ok=True)
    return path


def parse_args(doc: str, extra=None) -> argparse.Namespace:
    """``--seeds``, ``--steps``, ``--no-readme`` (and ``extra(parser)``'s flags)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="rebuild the table (and README section) from the saved summary.json, without running",
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


def publish(study: str, text: str, args: argparse.Namespace) -> None:
    """Writes ``results.md`` and, unless ``--no-readme``, the README section."""
    with open(os.path.join(results_dir(study), "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    if args.no_readme:
        return
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        readme = f.read()
    start, end = f"<!-- results:{study} -->", f"<!-- /results:{study} -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        sys.exit(f"README.md has no {start} ... {end} markers")
    with open(path, "w") as f:
        f.write(pattern.sub(lambda _: f"{start}\n{text}\n{end}", readme))


def summary_table(summary: dict, columns: list) -> str:
    """A markdown table, one row per estimator: ``columns`` is ``[(header, entry -> cell), ...]``."""
    lines = ["| estimator | " + " | ".join(h for h, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, entry in summary["estimators"].items():
        lines.append(f"| {name} | " + " | ".join(cell(entry) for _, cell in columns) + " |")
    return "\n".join(lines)


def mean_std(entry: dict, key: str, fmt: str = ".4f") -> str:
    value = entry[key]
    return f"{value['mean']:{fmt}} ± {value['std']:{fmt}}"
