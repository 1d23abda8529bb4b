"""Command line: ``unroll list``, ``unroll compare TASK`` and ``unroll advise TASK``, where
``TASK`` is a built-in name, an installed entry point's name, ``path/to/file.py:NAME`` or
``package.module:NAME``.

Usage errors (a bad flag, file, name or option, refused by unroll's own checks) are one line on
stderr and exit code 2; any other exception (raised in the user's own code, by JAX, or a bug of
ours) propagates with its traceback."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from unroll._errors import BadValue, UsageError

__all__ = ["main"]


if TYPE_CHECKING:  # only for an annotation: each command imports what it uses where it runs
    from unroll.training import TrainingInterrupted

_USAGE_ERROR = 2
_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # the shell's exit codes for these signals


def _list(_: argparse.Namespace) -> int:
    from unroll import registry
    from unroll._task_loader import DEFAULT_ESTIMATORS, TASKS, entry_points, task_options

    def show(name, make, where=""):
        options = ", ".join(f"{n}={d!r}" for n, d in task_options(make).items()) if callable(make) else "none"
        print(f"task {name}{where}: {((make.__doc__ or '').strip().splitlines() or [''])[0]}")
        print(f"  options: {options}")
        if name in DEFAULT_ESTIMATORS:
            print(f"  default estimators: {' '.join(DEFAULT_ESTIMATORS[name])}")

    for name, make in TASKS.items():
        show(name, make)
    for name, found in entry_points().items():
        show(name, found.load(), f" (entry point {found.value})")
    print("your own task: unroll compare path/to/file.py:NAME or package.module:NAME (NAME a Task or a function")
    print("  returning one; its keyword arguments from --task-option KEY=VALUE)")
    print("estimators (each task sets its own workers, particles and sigma), by family:")
    for family, about in registry.FAMILIES.items():
        print(f"  {family}: {about}")
        for entry in registry.ESTIMATORS.values():
            if entry.family == family:
                print(f"    {entry.name}{'[-K]' if entry.windowed else ''}: {entry.description}")
    return 0


_CONFIG_KEYS = {
    "task",
    "estimators",
    "seeds",
    "steps",
    "horizon",
    "out",
    "task_options",
    "seed",
    "checkpoint_every",
    "budget",
}


def _load_config(path: str) -> dict:
    """The settings of ``--config FILE.toml``: top-level ``task``, ``estimators`` (a list),
    ``seeds``, ``steps``, ``horizon``, ``out``, ``seed``, ``checkpoint_every``, ``budget`` and a
    ``[task_options]`` table of the task's own keyword arguments (e.g. ``cell``, ``hidden``)."""
    import tomllib

    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except OSError as err:
        raise BadValue(f"--config {path!r}: cannot read it ({err.strerror}).") from None
    except tomllib.TOMLDecodeError as err:
        raise BadValue(f"--config {path!r} is not valid TOML: {err}.") from None
    unknown = sorted(set(config) - _CONFIG_KEYS)
    if unknown:
        raise BadValue(
            f"--config {path!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_CONFIG_KEYS))}."
        )
    if "estimators" in config and not (
        isinstance(config["estimators"], list) and all(isinstance(e, str) for e in config["estimators"])
    ):
        raise BadValue(f'--config {path!r}: `estimators` must be a list of names, e.g. ["pes", "tbptt-10"].')
    if not isinstance(config.get("task_options", {}), dict):
        raise BadValue(f"--config {path!r}: `task_options` must be a table, e.g. [task_options] hidden = 32.")
    return config


def _parse_task_option(text: str) -> tuple[str, object]:
    """``"hidden=32"`` -> ``("hidden", 32)``: the value read as a TOML value (numbers, booleans,
    quoted strings, lists), else kept as the string given (``cell=lstm``)."""
    import tomllib

    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise BadValue(f"--task-option {text!r}: write KEY=VALUE with KEY a Python name, e.g. --task-option hidden=32.")
    try:
        return key, tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        return key, value.strip()


class _CompareSettings(NamedTuple):
    """What ``unroll compare`` runs: each flag, or where it is not given the --config file's setting."""

    task: str
    estimators: list[str] | None  # None: the task's defaults
    task_options: dict
    seeds: int | None
    steps: int | None
    out: str | None
    seed: int
    checkpoint_every: int | None
    budget: str
    config: dict | None  # the --config file's contents


def _compare(args: argparse.Namespace) -> int:
    from unroll.comparison import compare, summary_text
    from unroll.training import TrainingInterrupted

    settings = _compare_settings(args)
    try:
        out_dir, summary = compare(
            settings.task,
            settings.estimators,
            steps=settings.steps,
            seeds=settings.seeds,
            budget=settings.budget,
            out_dir=settings.out,
            progress=not args.no_progress,
            task_options=settings.task_options or None,
            command=shlex.join(["unroll"] + args.argv),
            seed=settings.seed,
            checkpoint_every=settings.checkpoint_every,
            tensorboard=args.tensorboard,
            config=settings.config,
        )
    except TrainingInterrupted as err:
        return _interrupted(err, args.argv, settings.out)
    print("\n" + summary_text(summary))
    print(f"\nwrote {out_dir}/metrics.csv, summary.json, curves.png, report.md (checkpoints in {out_dir}/checkpoints)")
    return 0


def _compare_settings(args: argparse.Namespace) -> _CompareSettings:
    """The flags over the --config file's settings, checked before anything runs."""
    config = _load_config(args.config) if args.config else None
    file = config or {}
    task = args.task or file.get("task")
    if task is None:
        raise BadValue(
            "no task given: name one (see `unroll list`), point at your own (path/to/file.py:NAME or "
            "package.module:NAME) or set `task` in the --config file."
        )
    estimators = [e for part in args.estimators for e in part.split(",") if e] if args.estimators else None
    estimators = estimators or file.get("estimators")
    task_options = dict(file.get("task_options", {}))
    task_options.update(_parse_task_option(text) for text in args.task_option or [])
    horizon = args.horizon if args.horizon is not None else file.get("horizon")
    if horizon is not None:
        task_options["horizon"] = horizon

    def setting(name):
        value = getattr(args, name)
        return value if value is not None else file.get(name)

    seed = setting("seed") if setting("seed") is not None else 0
    budget = setting("budget") or "outer-steps"
    return _CompareSettings(
        task,
        estimators,
        task_options,
        setting("seeds"),
        setting("steps"),
        args.out or file.get("out"),
        seed,
        setting("checkpoint_every"),
        budget,
        config,
    )


def _advise(args: argparse.Namespace) -> int:
    from unroll._task_loader import load_task
    from unroll.advisor import advise, verify
    from unroll.plotting import plot_advice

    task_options = dict(_parse_task_option(text) for text in args.task_option or [])
    if args.horizon is not None:
        task_options["horizon"] = args.horizon
    candidates = [c for part in args.candidates for c in part.split(",") if c] if args.candidates else None
    if args.verify_seconds is not None and not args.verify_seconds > 0:
        raise BadValue(f"--verify-seconds {args.verify_seconds}: must be positive, e.g. --verify-seconds 20.")
    loaded = load_task(args.task, task_options or None)
    advice = advise(
        loaded.task,
        key=args.seed,
        seconds=args.seconds,
        memory_budget=args.memory,
        candidates=candidates,
        progress=not args.no_progress,
    )
    out = args.out or os.path.join("runs", f"{loaded.task.name}-advice-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out, exist_ok=True)
    plots = plot_advice(advice, out)
    report = advice.to_markdown(plots)
    data = json.loads(advice.to_json())
    data["command"] = shlex.join(["unroll"] + args.argv)
    verification = None
    if args.verify and advice.recommendation is not None:
        verification = verify(
            advice,
            seconds=args.verify_seconds or 20.0,
            out_dir=os.path.join(out, "verify"),
            progress=not args.no_progress,
        )
        report += "\n## Verification\n\n" + verification.text + " Curves: verify/curves.png.\n"
        data["verification"] = verification._asdict()
    report += f"\nCommand: `{data['command']}`\n"
    with open(os.path.join(out, "advice.md"), "w") as f:
        f.write(report)
    with open(os.path.join(out, "advice.json"), "w") as f:
        json.dump(data, f, indent=2)
    print("\n" + advice.summary())
    if verification is not None:
        print(verification.text)
    elif args.verify:
        print("--verify: nothing raced (no recommendation).")
    print(f"\nwrote {out}/advice.md, advice.json, {', '.join(plots.values())}")
    return 0 if advice.recommendation is not None else 1


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
    return _INTERRUPTED[err.signal_name]


def _usage_error(err: BaseException) -> bool:
    """An error of unroll's own input checks (`unroll._errors.UsageError`: `BadValue`,
    `BadType`), raised with no frame of the user's code on the way (JAX's, the standard
    library's and installed packages' frames aside). Anything else (an error inside the
    user's task, a JAX tracing error, a bug of ours) keeps its traceback."""
    import sysconfig

    if not isinstance(err, UsageError):
        return False
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    paths = sysconfig.get_paths()
    libraries = tuple({os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib", "purelib", "platlib")})
    files, tb = [], err.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        files.append("<" if name.startswith("<") else os.path.abspath(name))
        tb = tb.tb_next
    return all(f.startswith(package) or f == "<" or f.startswith(libraries) for f in files)


class _OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (a flag that is not an int, an unknown flag or command) as one
    line with exit code 2, like every other error of the command line."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}; see `{self.prog} --help`.", file=sys.stderr)
        raise SystemExit(_USAGE_ERROR)


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="unroll", description="Gradient estimators for unrolled computations.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    sub.add_parser("list", help="list tasks and estimators").set_defaults(run=_list)
    _add_compare_parser(sub)
    _add_advise_parser(sub)
    return parser


def _add_compare_parser(sub) -> None:
    """`unroll compare`'s parser: what runs, then how the run is seeded and recorded."""
    compare = sub.add_parser("compare", help="run estimators side by side on a task, at an equal budget")
    _add_compare_run_arguments(compare)
    _add_compare_record_arguments(compare)
    compare.set_defaults(run=_compare)


def _add_compare_run_arguments(compare: argparse.ArgumentParser) -> None:
    """`unroll compare`'s task, estimators, seeds, steps, budget, task options and horizon."""
    compare.add_argument(
        "task",
        nargs="?",
        help="a task name (see `unroll list`), or your own: path/to/file.py:NAME or package.module:NAME, NAME an "
        "unroll.Task or a function returning one; or `task` in --config",
    )
    compare.add_argument(
        "--estimators",
        nargs="+",
        help="estimator names, e.g. pes nres tbptt-10 (default: the task's default estimators)",
    )
    compare.add_argument("--seeds", type=int, help="number of seeds (default: the task's)")
    compare.add_argument(
        "--steps",
        type=int,
        help="outer steps per estimator, or the default amount of another --budget (default: the task's)",
    )
    compare.add_argument(
        "--budget",
        help="what every estimator gets the same amount of: outer-steps (default), system-steps or seconds, "
        "optionally with an amount (system-steps=200000, seconds=60; without one: what --steps outer steps of "
        "the first estimator spend)",
    )
    compare.add_argument(
        "--task-option",
        action="append",
        metavar="KEY=VALUE",
        dest="task_option",
        help="a keyword argument of the task's function (repeatable; values read as TOML: 32, 1e-3, true, "
        "[1, 2], else a string)",
    )
    compare.add_argument(
        "--horizon", type=int, help="episode length of the task (its `horizon` option; default: the task's)"
    )


def _add_compare_record_arguments(compare: argparse.ArgumentParser) -> None:
    """`unroll compare`'s output folder, base seed, checkpoints, progress, TensorBoard and config file."""
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
        help="TOML file with the same settings (flags given here win) and a [task_options] table of task arguments; "
        "its contents are recorded in summary.json",
    )


def _add_advise_parser(sub) -> None:
    """`unroll advise`'s parser."""
    advise = sub.add_parser(
        "advise", help="measure a task's system and recommend an estimator, with the evidence (unroll.advise)"
    )
    advise.add_argument(
        "task", help="a task name (see `unroll list`), or your own: path/to/file.py:NAME or package.module:NAME"
    )
    advise.add_argument("--seconds", type=float, default=120.0, help="the measurements' time budget (default: 120)")
    advise.add_argument(
        "--memory", help="the most compiled memory a candidate may take, e.g. 64MiB (default: the task's memory_limit)"
    )
    advise.add_argument("--candidates", nargs="+", help="estimator names to consider (default: every registered one)")
    advise.add_argument("--out", help="output folder (default: runs/TASK-advice-TIME)")
    advise.add_argument(
        "--verify",
        action="store_true",
        help="then race the top three under `unroll compare --budget seconds` and say whether the winner is the "
        "recommendation",
    )
    advise.add_argument(
        "--verify-seconds", type=float, dest="verify_seconds", help="training seconds each (default: 20)"
    )
    advise.add_argument(
        "--task-option", action="append", metavar="KEY=VALUE", dest="task_option", help="a keyword argument of the task"
    )
    advise.add_argument("--horizon", type=int, help="episode length of the task (its `horizon` option)")
    advise.add_argument("--seed", type=int, default=0, help="the measurements' seed (default: 0)")
    advise.add_argument("--no-progress", action="store_true", help="no progress bars")
    advise.set_defaults(run=_advise)


def main(argv: list[str] | None = None) -> int:
    """The `unroll` command: `unroll list`, `unroll compare TASK`, `unroll advise TASK`.

    Args:
      argv: the arguments after `unroll` (default: `sys.argv[1:]`).

    Returns:
      The exit code: 0 on success, 1 when `advise` finds no estimator to recommend, 2 for a
      usage error of unroll's own checks (one line on stderr), 130 / 143 after Ctrl-C /
      SIGTERM (the run saved itself). Any other exception propagates with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return exit_.code
    args.argv = argv
    try:
        return args.run(args)
    except UsageError as err:  # unroll's own checks: a wrong type (e.g. seeds = "two" in --config), value or extra
        if not _usage_error(err):
            raise  # an error in the user's own code (or a bug of ours): its traceback
        print(f"unroll {args.command}: error: {err}", file=sys.stderr)
        return _USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
