"""Command line: ``unroll list`` and ``unroll compare TASK``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # only for an annotation: each command imports what it uses where it runs
    from unroll.train import TrainingInterrupted

USAGE_ERROR = 2
INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # the shell's exit codes for these signals


def _list(_: argparse.Namespace) -> int:
    import inspect

    from unroll import registry
    from unroll.compare import DEFAULT_ESTIMATORS, TASKS

    for task, make in TASKS.items():
        options = ", ".join(f"{n}={p.default!r}" for n, p in inspect.signature(make).parameters.items())
        print(f"task {task}: {(make.__doc__ or '').strip().splitlines()[0]}")
        print(f"  options: {options}")
        print(f"  default estimators: {' '.join(DEFAULT_ESTIMATORS[task])}")
    print("estimators (each task sets its own workers, particles and sigma), by family:")
    for family, about in registry.FAMILIES.items():
        print(f"  {family}: {about}")
        for entry in registry.ESTIMATORS.values():
            if entry.family == family:
                print(f"    {entry.name}{'[-K]' if entry.windowed else ''}: {entry.description}")
    return 0


CONFIG_KEYS = {"task", "estimators", "seeds", "steps", "horizon", "out", "task_options", "seed", "checkpoint_every"}


def load_config(path: str) -> dict:
    """The settings of ``--config FILE.toml``: top-level ``task``, ``estimators`` (a list),
    ``seeds``, ``steps``, ``horizon``, ``out``, ``seed``, ``checkpoint_every`` and a
    ``[task_options]`` table of the task's own keyword arguments (e.g. ``cell``, ``hidden``)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except OSError as err:
        raise ValueError(f"--config {path!r}: cannot read it ({err.strerror}).") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--config {path!r} is not valid TOML: {err}.") from None
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"--config {path!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(CONFIG_KEYS))}."
        )
    if "estimators" in config and not (
        isinstance(config["estimators"], list) and all(isinstance(e, str) for e in config["estimators"])
    ):
        raise ValueError(f'--config {path!r}: `estimators` must be a list of names, e.g. ["pes", "tbptt-10"].')
    if not isinstance(config.get("task_options", {}), dict):
        raise ValueError(f"--config {path!r}: `task_options` must be a table, e.g. [task_options] hidden = 32.")
    return config


class _CompareSettings(NamedTuple):
    """What ``unroll compare`` runs: each flag, or where it is not given the --config file's setting."""

    task: str
    estimators: list[str] | None  # None: the task's defaults
    task_kwargs: dict
    seeds: int | None
    steps: int | None
    out: str | None
    seed: int
    checkpoint_every: int | None


def _compare(args: argparse.Namespace) -> int:
    from unroll.compare import compare
    from unroll.train import TrainingInterrupted

    settings = _compare_settings(args)
    try:
        out_dir, summary = compare(
            settings.task,
            settings.estimators,
            settings.seeds,
            settings.steps,
            settings.out,
            progress=not args.no_progress,
            task_kwargs=settings.task_kwargs or None,
            command=shlex.join(["unroll"] + args.argv),
            seed=settings.seed,
            checkpoint_every=settings.checkpoint_every,
            tensorboard=args.tensorboard,
        )
    except TrainingInterrupted as err:
        return _interrupted(err, args.argv, settings.out)
    _print_summary(settings.task, out_dir, summary)
    return 0


def _compare_settings(args: argparse.Namespace) -> _CompareSettings:
    """The flags over the --config file's settings, checked before anything runs."""
    config = load_config(args.config) if args.config else {}
    task = args.task or config.get("task")
    if task is None:
        raise ValueError("no task given: name one (see `unroll list`) or set `task` in the --config file.")
    estimators = [e for part in args.estimators for e in part.split(",") if e] if args.estimators else None
    estimators = estimators or config.get("estimators")
    task_kwargs = dict(config.get("task_options", {}))
    horizon = args.horizon if args.horizon is not None else config.get("horizon")
    if horizon is not None:
        task_kwargs["horizon"] = horizon

    def setting(name):
        value = getattr(args, name)
        return value if value is not None else config.get(name)

    out = args.out or config.get("out")
    _check_task_options(task, task_kwargs)
    seed = setting("seed") if setting("seed") is not None else 0
    return _CompareSettings(
        task, estimators, task_kwargs, setting("seeds"), setting("steps"), out, seed, setting("checkpoint_every")
    )


def _interrupted(err: TrainingInterrupted, argv: list[str], out: str | None) -> int:
    """Says how to resume (the same command, with the run's folder if ``--out`` chose none) and
    returns the shell's exit code for the signal."""
    folder = os.path.dirname(os.path.dirname(err.checkpoint))
    again = shlex.join(["unroll"] + argv + ([] if out else ["--out", folder]))
    print(
        f"\nunroll compare: interrupted ({err.signal_name}) after outer step {err.step}; saved to "
        f"{err.checkpoint}; resume with: {again}",
        file=sys.stderr,
    )
    return INTERRUPTED[err.signal_name]


def _print_summary(task: str, out_dir: str, summary: dict) -> None:
    """The task's reference figures, the estimators' table, the runs that turned non-finite, the files."""
    reference = summary["reference"]
    known = {k: v for k, v in reference.items() if isinstance(v, (int, float)) and k != "horizon"}
    print(f"\n{task} (horizon {reference.get('horizon')}): objective = {reference.get('objective', 'objective')}")
    if known:
        print("  reference: " + ", ".join(f"{k} = {v:.5g}" for k, v in known.items()))
    _print_table(summary["estimators"])
    for name, entry in summary["estimators"].items():
        stopped = [(seed, step) for seed, step in enumerate(entry["first_nonfinite_step"]) if step >= 0]
        if stopped:
            where = ", ".join(f"seed {seed} at outer step {step}" for seed, step in stopped)
            print(
                f"{name:>12s}: a non-finite loss or gradient ({where}); its figures are those of the last finite theta"
            )
    print(f"\nwrote {out_dir}/metrics.csv, summary.json, curves.png (checkpoints in {out_dir}/checkpoints)")


def _print_table(estimators: dict) -> None:
    """One row per estimator: its final objective and other final metrics (and whether it reached the target)."""
    print(
        f"{'estimator':>12s} {'final objective (mean ± std)':>30s}  other metrics (mean){'  reached' if any('reached' in e for e in estimators.values()) else ''}"
    )
    for name, entry in estimators.items():
        objective = entry["final_objective"]
        others = ", ".join(
            f"{k[6:]}={v['mean']:.4g}"
            for k, v in entry.items()
            if k.startswith("final_") and k not in ("final_objective", "final_window_loss") and isinstance(v, dict)
        )
        reached = "" if "reached" not in entry else ("  yes" if entry["reached"] else "  no")
        print(f"{name:>12s} {objective['mean']:>18.5g} ± {objective['std']:<9.3g}  {others}{reached}")


def _check_task_options(task: str, task_kwargs: dict) -> None:
    """A task option the task does not take fails here, before anything runs."""
    import inspect

    from unroll.compare import TASKS

    if task in TASKS:  # (an unknown task is reported by compare)
        try:
            inspect.signature(TASKS[task]).bind(**task_kwargs)
        except TypeError as err:
            raise ValueError(f"task {task!r}: {err}; see the task's options in `unroll list`.") from None


class _OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a flag that is not an int, an unknown flag or command) as one
    line with exit code 2, like every other error of the command line."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see `{self.prog} --help`.", file=sys.stderr)
        raise SystemExit(USAGE_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="unroll", description="Gradient estimators for unrolled computations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    sub.add_parser("list", help="list tasks and estimators").set_defaults(run=_list)
    compare = sub.add_parser("compare", help="run estimators side by side on a task")
    compare.add_argument("task", nargs="?", help="task name (see `unroll list`); or `task` in --config")
    compare.add_argument("--estimators", nargs="+", help="estimator names, e.g. pes nres tbptt-10 (default: all)")
    compare.add_argument("--seeds", type=int, help="number of seeds (default: the task's)")
    compare.add_argument("--steps", type=int, help="outer steps per estimator (default: the task's)")
    compare.add_argument("--horizon", type=int, help="episode length of the task (default: the task's)")
    compare.add_argument(
        "--out",
        help="output folder (default: runs/TASK-TIME); a folder holding this comparison's checkpoints resumes it",
    )
    compare.add_argument("--seed", type=int, help="base seed: the seeds' keys are split(key(SEED), SEEDS) (default: 0)")
    compare.add_argument(
        "--checkpoint-every",
        type=int,
        dest="checkpoint_every",
        help="outer steps between checkpoints of each estimator's run (default: a tenth of --steps)",
    )
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="also stream every estimator's metrics to TensorBoard event files in DIR/ESTIMATOR/seedI "
        "(needs tensorboardX: pip install 'unroll[log]')",
    )
    compare.add_argument(
        "--config",
        help="TOML file with the same settings (flags given here win) and a [task_options] table of task arguments",
    )
    compare.set_defaults(run=_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code
    args.argv = argv
    try:
        return args.run(args)
    except (TypeError, ValueError) as err:  # bad input: a wrong type (e.g. seeds = "two" in --config) or value
        print(f"unroll {args.command}: error: {err}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
