"""Command line: ``unroll list`` and ``unroll compare TASK``."""

from __future__ import annotations

import argparse
import shlex
import sys

USAGE_ERROR = 2


def _list(_: argparse.Namespace) -> int:
    from unroll.compare import TASKS

    for task, make in TASKS.items():
        setup = make()
        print(f"task {task}: {(make.__doc__ or '').strip().splitlines()[0]}")
        for family, spec in setup.estimators.items():
            suffix = f"[-K]  (default K={spec.default_truncation})" if spec.default_truncation else ""
            print(f"  {family}{suffix}: {spec.description}")
        print(f"  default: {' '.join(setup.default_estimators)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from unroll.compare import compare

    estimators = [e for part in args.estimators for e in part.split(",") if e] if args.estimators else None
    task_kwargs = {"horizon": args.horizon} if args.horizon is not None else None
    out_dir, summary = compare(
        args.task, estimators, args.seeds, args.steps, args.out, progress=not args.no_progress,
        task_kwargs=task_kwargs, command=shlex.join(["unroll"] + args.argv),
    )
    reference = summary["reference"]
    print(f"\n{args.task}: theta* = {reference.get('theta_star', float('nan')):.4f} (horizon {reference.get('horizon')})")
    print(f"{'estimator':>12s} {'final theta (mean ± std)':>26s} {'objective':>12s}  reached theta*")
    for name, entry in summary["estimators"].items():
        theta, objective = entry["final_theta"], entry["final_objective"]
        reached = entry.get("reached_theta_star")
        print(
            f"{name:>12s} {theta['mean']:>16.4f} ± {theta['std']:<8.4f} {objective['mean']:>12.5g}  "
            f"{'yes' if reached else 'no'}"
        )
    print(f"\nwrote {out_dir}/metrics.csv, summary.json, curves.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unroll", description="Gradient estimators for unrolled computations.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list tasks and estimators").set_defaults(run=_list)
    compare = sub.add_parser("compare", help="run estimators side by side on a task")
    compare.add_argument("task", help="task name (see `unroll list`)")
    compare.add_argument("--estimators", nargs="+", help="estimator names, e.g. pes nres tbptt-10 (default: all)")
    compare.add_argument("--seeds", type=int, help="number of seeds (default: the task's)")
    compare.add_argument("--steps", type=int, help="outer steps per estimator (default: the task's)")
    compare.add_argument("--horizon", type=int, help="episode length of the task (default: the task's)")
    compare.add_argument("--out", help="output folder (default: runs/TASK-TIME)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except ValueError as err:
        print(f"unroll {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
