"""Side-by-side runs of estimators on one task, at an equal budget: ``unroll.compare`` and
``unroll compare TASK``.

Each estimator is trained from the task's initial theta with its optimizer over several
seeds (the seeds are a vmap axis of one compiled outer step). The budget is the same for
every estimator: the same outer steps, the same system steps (all workers and particles),
or the same seconds of training. Written to the output folder:

* ``metrics.csv``: one row per (estimator, seed, outer step): window loss, gradient
  norm, cumulative inner (system) steps and, where evaluated, the task's objective and its
  other scalar metrics (theta itself when it is a scalar). It holds no wall-clock
  figures (``summary.json`` has them), so the same command and seed write the same
  file, byte for byte;
* ``summary.json``: everything that rebuilds the run: the command, versions, the task's
  name, source and options, the ``--config`` file's contents, the budget, the seeds, the
  task's reference answers, and per estimator its full settings (the registry's defaults
  merged with the task's), its outer steps, system steps and training and compile seconds,
  and its final objective and metrics (mean, spread, per seed);
* ``curves.png``: the objective against outer steps, system steps and training time
  (mean and min-max band over seeds);
* ``report.md``: the table the terminal prints, the reference answers, the budget, the
  plot and the command that reproduces the run;
* ``checkpoints/<estimator>.npz``: each estimator's whole run (``unroll.train``'s
  checkpoint, format in ``unroll.resume``), saved every ``checkpoint_every`` outer
  steps, at its end and on Ctrl-C / SIGTERM. Running the same comparison into the same
  folder again resumes: finished estimators are read back, an interrupted one goes on
  from its checkpoint, bit for bit as if never stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import time
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

import unroll
from unroll import registry
from unroll._errors import BadType, BadValue
from unroll._system import check_positive_int
from unroll._task_loader import TASKS as TASKS  # re-exported: the built-in tasks
from unroll._task_loader import load_task
from unroll.plotting import plot_curves
from unroll.task import Task
from unroll.training import train

__all__ = [
    "BUDGETS",
    "Budget",
    "TASKS",
    "build_estimator",
    "compare",
    "parse_budget",
    "parse_estimator",
    "report",
    "summary_text",
    "system_steps_per_outer_step",
]


BUDGETS = {
    "outer-steps": "the same number of outer steps (estimates) for every estimator",
    "system-steps": "the same total number of system steps (all workers and particles) for every estimator",
    "seconds": "the same seconds of training (compile and evaluation excluded) for every estimator",
}


class Budget(NamedTuple):
    """What every estimator of a comparison gets the same amount of (`parse_budget`'s result).

    Attributes:
      kind: a key of `BUDGETS`: `"outer-steps"`, `"system-steps"` or `"seconds"`.
      amount: the amount each estimator gets (an int of steps, or float seconds); `None`: what `steps` outer
        steps of the first estimator spend.
    """

    kind: str  # a key of BUDGETS
    amount: float | None  # None: what `steps` outer steps of the first estimator spend


class _Allowance(NamedTuple):
    """One estimator's share of the budget, as `unroll.train` takes it.

    Attributes:
      num_steps: outer steps (at most, under a time limit): `train`'s `num_steps`.
      time_limit: seconds of training, or `None`: `train`'s `time_limit`.
      calibration: with a seconds budget, the short timed run that sized `num_steps` (a dict with its
        `outer_steps` and `seconds`); else `None`.
    """

    num_steps: int  # outer steps (at most, under a time limit)
    time_limit: float | None  # seconds of training, or None
    calibration: dict | None = None  # seconds budget: the short timed run that sized num_steps


class _Run(NamedTuple):
    """One estimator's finished run.

    Attributes:
      theta: the final theta, with a leading seed axis (`unroll.train`'s, with `num_seeds`).
      history: `unroll.train`'s history of the run, with a leading seed axis.
      family: the registry name it was built from (`"tbptt"` for `"tbptt-10"`), or the task's own build's name.
      truncation: its truncation, or `None` for an estimator of whole episodes.
      settings: every keyword argument it was built with (`_estimator_settings`).
      allowance: its share of the budget (`_Allowance`).
    """

    theta: Any
    history: dict
    family: str
    truncation: int | None
    settings: dict
    allowance: _Allowance


def parse_budget(budget: Any) -> Budget:
    """The checked budget of a comparison.

    Args:
      budget: ``"outer-steps"``, ``"system-steps"`` or ``"seconds"``, each optionally with an amount
        (``"seconds=60"``, ``"system-steps=200000"``), or a ``(kind, amount)`` pair. Steps are whole
        numbers; every amount is positive.

    Returns:
      ``Budget(kind, amount)``, ``amount`` None where none was given.
    """
    if isinstance(budget, str):
        kind, _, amount = budget.partition("=")
        kind, amount = kind.strip(), (amount.strip() or None)
    elif isinstance(budget, tuple) and len(budget) == 2:
        kind, amount = budget
    else:
        raise BadType(
            f"`budget` must be one of {', '.join(map(repr, BUDGETS))}, optionally with an amount "
            f"('seconds=60'), got {budget!r}."
        )
    if kind not in BUDGETS:
        raise BadValue(
            f"unknown budget kind {kind!r}; choose from {', '.join(BUDGETS)}, optionally with an amount, "
            "e.g. --budget system-steps=200000 or --budget seconds=60."
        )
    if amount is None:
        return Budget(kind, None)
    try:
        value = float(amount)
    except (TypeError, ValueError):
        raise BadValue(f"budget {kind}={amount!r}: the amount must be a number, e.g. {kind}=100.") from None
    if not 0 < value < math.inf:
        raise BadValue(f"budget {kind}={amount}: the amount must be positive, e.g. {kind}=100.")
    if kind != "seconds":
        if value != int(value):
            raise BadValue(f"budget {kind}={amount}: {kind} are counted in whole steps, e.g. {kind}=100.")
        value = int(value)
    return Budget(kind, value)


def parse_estimator(name: str, task: Task) -> tuple[str, int | None]:
    """An estimator's name split into its family and truncation: `"tbptt-10"` -> `("tbptt", 10)`.

    `"pes"` -> `("pes", the task's truncation)`; `("full-bptt", None)` for estimators of whole
    episodes. Names are the registry's, or exactly a key of `task.estimators` (the task's own
    builds, e.g. `"pes-10 num_particles=24"` from `unroll advise --verify`), which gets the
    task's truncation.

    Args:
      name: a registry name, with `-K` for a truncation $K$ in $[1, T]$ ($T$ the horizon), or a key of
        `task.estimators`.
      task: the task whose settings give the default truncation.

    Returns:
      `(family, truncation)`, `truncation` None for an estimator of whole episodes.

    Raises:
      BadValue: an unknown name, a truncation on an estimator that takes none, or one outside $[1, T]$.
    """
    if name in task.estimators:
        return name, task.settings["truncation"]
    match = re.fullmatch(r"([a-z][a-z-]*?)(?:-(\d+))?", name)
    family = match.group(1) if match else name
    if not match or family not in {**registry.ESTIMATORS, **task.estimators}:
        known = ", ".join(sorted({**registry.ESTIMATORS, **task.estimators}))
        raise BadValue(f"unknown estimator {name!r}; choose from {known} (add -K for a truncation, e.g. tbptt-10).")
    windowed = registry.ESTIMATORS[family].windowed if family in registry.ESTIMATORS else True
    if match.group(2) is None:
        return family, task.settings["truncation"] if windowed else None
    if not windowed:
        raise BadValue(f"estimator {family!r} takes no truncation; write {family!r} without -{match.group(2)}.")
    truncation = int(match.group(2))
    if not 1 <= truncation <= task.system.horizon:
        raise BadValue(f"estimator {name!r}: truncation {truncation} must lie in [1, horizon={task.system.horizon}].")
    return family, truncation


def _shared_settings(task: Task, truncation: int | None) -> dict:
    """The task's shared settings, with ``truncation`` for a windowed estimator."""
    return task.settings if truncation is None else {**task.settings, "truncation": truncation}


def _estimator_settings(task: Task, name: str, truncation: int | None) -> dict:
    """Every keyword argument `name` is built with on `task`.

    These are the registry's defaults merged with the task's shared settings and `truncation`:
    `registry.ESTIMATORS[name].constructor(system, **these)` rebuilds it. A task's own build records
    its `settings` attribute, else its truncation alone.

    Args:
      task: the task.
      name: a registry name (a family, without `-K`), or a key of `task.estimators`.
      truncation: the window length for a windowed estimator, else `None`.

    Returns:
      A dict of keyword arguments.
    """
    if name in task.estimators:
        return dict(getattr(task.estimators[name], "settings", {"truncation": truncation}))
    return registry.constructor_settings(name, **_shared_settings(task, truncation))


def build_estimator(task: Task, name: str, truncation: int | None):
    """The task's own build of `name` if it has one, else the registry's with the task's shared settings.

    Args:
      task: the task.
      name: a registry name (a family, without `-K`), or a key of `task.estimators`.
      truncation: the window length for a windowed estimator (passed as the `truncation` setting), else `None`.

    Returns:
      The built estimator.
    """
    if name in task.estimators:
        return task.estimators[name](task.system, truncation)
    return registry.build(name, task.system, **_shared_settings(task, truncation))


def compare(
    task: Task | str,
    estimators: list[str] | None = None,
    *,
    steps: int | None = None,
    seeds: int | None = None,
    budget: str | tuple = "outer-steps",
    out_dir: str | None = None,
    progress: bool = True,
    task_options: dict | None = None,
    command: str | None = None,
    seed: int = 0,
    checkpoint_every: int | None = None,
    tensorboard: str | None = None,
    config: dict | None = None,
) -> tuple[str, dict]:
    """Runs every estimator on `task` at an equal budget and writes the results to `out_dir`.

    The files written are `metrics.csv`, `summary.json`, `curves.png` and `report.md`.
    Seeds are ``split(key(seed), seeds)``. Each estimator's run is checkpointed to
    ``out_dir/checkpoints/`` every ``checkpoint_every`` outer steps and on interrupt; an
    ``out_dir`` that holds checkpoints of the same comparison resumes from them (one of
    another comparison is refused). An estimator whose loss or gradient turns non-finite
    stops there (the warning and the summary's ``first_nonfinite_step`` say where) and the
    others go on.

    Budgets, for estimator $e$ taking $n_e$ system steps per outer step (all workers and
    particles; ``info["steps"]``):

    * ``"outer-steps"`` (or ``"outer-steps=N"``): $N$ outer steps each ($N$ = ``steps``);
    * ``"system-steps=S"``: $\\lfloor S / n_e \\rfloor$ outer steps each, so every estimator's
      total is within one outer step's worth ($n_e$) of $S$;
    * ``"seconds=s"``: each trains for $s$ seconds (``unroll.train(time_limit=s)``; compile
      and evaluation excluded), its optimizer's schedule sized by a short timed run to the
      outer steps that fit.

    Without an amount, the budget is what ``steps`` outer steps of the first estimator spend.

    Args:
      task: an ``unroll.Task``, a built-in task's name, an installed entry point's name, or
        ``"path/to/file.py:NAME"`` / ``"package.module:NAME"`` (``NAME`` a Task or a function
        returning one).
      estimators: registry names, with ``-K`` for a truncation (``"tbptt-10"``). Default: the
        task's ``default_estimators``.
      steps: outer steps (the ``outer-steps`` budget, and the default amount of the others).
        Default: the task's ``default_steps``.
      seeds: independent seeds, a vmap axis. Default: the task's ``default_seeds``.
      budget: what every estimator gets the same amount of (above).
      out_dir: the output folder. Default: ``runs/<task name>-<time>``.
      progress: draw progress bars.
      task_options: keyword arguments for the function that makes the task (a name or spec).
      command: how the run was started, for the summary and the report. Default: the
        ``unroll.compare(...)`` call.
      seed: the base of the seeds' keys.
      checkpoint_every: outer steps between checkpoints (default: a tenth of each run).
      tensorboard: a folder: each estimator's metrics are also streamed to
        ``tensorboard/<estimator>/seed<i>`` (``unroll.callbacks.tensorboard``).
      config: the ``--config`` file's contents, recorded in the summary.

    Returns:
      ``(out_dir, summary)``: the output folder and the summary dict (``summary.json``).
    """
    plan = _prepare(task, estimators, steps, seeds, budget, task_options, seed, checkpoint_every, out_dir)
    writers = (
        {name: unroll.callbacks.tensorboard(os.path.join(tensorboard, name)) for name in plan.names}
        if tensorboard
        else {}
    )
    runs: dict[str, _Run] = {}
    for name in plan.names:
        if plan.budget.kind == "seconds" and plan.budget.amount is None and runs:  # the first one's seconds
            seconds = round(float(runs[plan.names[0]].history["train_time_s"]), 3)
            plan = plan._replace(budget=plan.budget._replace(amount=seconds))
        runs[name] = _run(plan, name, progress, writers.get(name))
        if name in writers:
            writers[name].close()
    if command is None:
        command = _python_call(task, plan.names, plan.steps, plan.seeds, plan.budget, seed)
    summary = _summary(plan, runs, command, config)
    _write_outputs(plan.out_dir, plan.loaded.task, runs, summary)
    return plan.out_dir, summary


class _Plan(NamedTuple):
    """A comparison, checked and built before anything runs."""

    loaded: Any  # task_loader.LoadedTask
    names: list[str]
    parsed: dict[str, tuple[str, int | None]]  # name -> (registry family, truncation)
    built: dict[str, Any]  # name -> Estimator
    seeds: int
    steps: int
    seed: int
    checkpoint_every: int | None
    budget: Budget  # its amount resolved, but for a seconds budget set by the first estimator's run
    per_step: dict[str, int]  # system steps per outer step (system-steps budget only)
    out_dir: str


def _prepare(task, estimators, steps, seeds, budget, task_options, seed, checkpoint_every, out_dir) -> _Plan:
    """Validates every argument and builds every estimator: all errors come before any run."""
    loaded = load_task(task, task_options)
    task = loaded.task
    names = list(estimators or task.default_estimators)
    parsed = {name: parse_estimator(name, task) for name in names}
    seeds, steps, checkpoint_every = _check_run(task, seeds, steps, checkpoint_every, seed)
    budget = parse_budget(budget)
    if budget.kind == "outer-steps" and budget.amount is not None:
        steps = budget.amount  # "outer-steps=N" is --steps N
    built = {name: build_estimator(task, *parsed[name]) for name in names}
    per_step = _system_steps_per_outer_step(built, task, budget)
    if budget.amount is None and budget.kind != "seconds":
        budget = budget._replace(amount=steps * per_step.get(names[0], 1))
    if budget.kind == "system-steps":
        _check_system_steps(budget, per_step, names, steps)
    out_dir = out_dir or os.path.join("runs", f"{task.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)
    return _Plan(loaded, names, parsed, built, seeds, steps, seed, checkpoint_every, budget, per_step, out_dir)


def _run(plan: _Plan, name: str, progress: bool, callback) -> _Run:
    """Trains ``name`` for its share of the budget (checkpointed; a finished run is read back)."""
    task, (family, truncation) = plan.loaded.task, plan.parsed[name]
    allowance = _allowance(plan, name, lambda seconds: _calibrate(plan.built[name], task, plan.seeds, seconds))
    eval_every = max(1, allowance.num_steps // 100)  # about 100 evaluations per run
    theta, history = train(
        plan.built[name],
        task.optimizer(allowance.num_steps),
        task.theta,
        jax.random.key(plan.seed),
        allowance.num_steps,
        num_seeds=plan.seeds,
        eval_fn=task.evaluate,
        eval_every=eval_every,
        progress=progress,
        name=f"{name:>10s}",
        checkpoint=os.path.join(plan.out_dir, "checkpoints", f"{name}.npz"),
        checkpoint_every=plan.checkpoint_every or max(1, allowance.num_steps // 10),
        run_info={
            "task": task.name,
            "estimator": name,
            "task_options": json.dumps(plan.loaded.options, sort_keys=True, default=str),
            **({"budget": plan.budget.kind} if plan.budget.kind != "outer-steps" else {}),
        },
        time_limit=allowance.time_limit,
        callback=callback,
        callback_every=eval_every,
    )
    return _Run(theta, history, family, truncation, _estimator_settings(task, family, truncation), allowance)


def _check_run(task: Task, seeds, steps, checkpoint_every, seed) -> tuple[int, int, int | None]:
    """The checked ``(seeds, steps, checkpoint_every)`` of a comparison (the task's
    defaults where None)."""
    seeds = check_positive_int(task.default_seeds if seeds is None else seeds, "seeds")
    steps = check_positive_int(task.default_steps if steps is None else steps, "steps")
    if checkpoint_every is not None:
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BadValue(f"`seed`={seed!r} must be a non-negative int (the base of the seeds' keys), e.g. --seed 0.")
    return seeds, steps, checkpoint_every


def system_steps_per_outer_step(estimator, theta) -> int:
    """$n_e$: the system steps (all workers and particles) one `estimate` of `estimator` takes.

    It is the estimate's `info["steps"]`, read from one compiled call whose other outputs XLA prunes.

    Args:
      estimator: an `unroll` estimator.
      theta: the outer parameters it is called on.

    Returns:
      $n_e$, an int.
    """
    key = jax.random.key(0)
    steps = jax.jit(lambda: estimator.estimate(theta, estimator.init(theta, key), key)[2]["steps"])()
    return int(steps)


def _system_steps_per_outer_step(built: dict, task: Task, budget: Budget) -> dict[str, int]:
    """$n_e$ of each estimator (measured only for the ``system-steps`` budget)."""
    if budget.kind != "system-steps":
        return {}
    return {name: system_steps_per_outer_step(est, task.theta) for name, est in built.items()}


def _check_system_steps(budget: Budget, per_step: dict[str, int], names: list[str], steps: int) -> None:
    """A system-steps budget below one outer step of some estimator fails before any run."""
    short = {name: n for name, n in per_step.items() if n > budget.amount}
    if short:
        given = "" if budget.amount != steps * per_step[names[0]] else f" ({steps} outer steps of {names[0]})"
        raise BadValue(
            f"budget system-steps={budget.amount}{given} is less than one outer step of "
            + ", ".join(f"{name} ({n} system steps)" for name, n in short.items())
            + f"; give at least system-steps={max(short.values())} (or more --steps)."
        )


def _allowance(plan: _Plan, name: str, calibrate) -> _Allowance:
    """``name``'s outer steps and time limit under the plan's budget. A seconds budget is sized by
    ``calibrate(seconds)`` once (a tenth of the budget, from 0.2 to 2 seconds); its result is kept
    beside the checkpoint, so a resumed comparison runs the same number of steps."""
    budget = plan.budget
    if budget.kind == "outer-steps":
        return _Allowance(budget.amount, None)
    if budget.kind == "system-steps":
        return _Allowance(budget.amount // plan.per_step[name], None)
    if budget.amount is None:  # the first estimator sets the seconds of the others
        return _Allowance(plan.steps, None)
    path = os.path.join(plan.out_dir, "checkpoints", f"{name}.allowance.json")
    if os.path.exists(path):
        with open(path) as f:
            kept = json.load(f)
        if kept["time_limit"] == budget.amount:
            return _Allowance(kept["num_steps"], kept["time_limit"], kept["calibration"])
    calibration = calibrate(min(2.0, max(0.2, 0.1 * budget.amount)))
    rate = calibration["outer_steps"] / max(calibration["seconds"], 1e-9)
    allowance = _Allowance(max(1, math.floor(rate * budget.amount)), float(budget.amount), calibration)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(allowance._asdict(), f)
    return allowance


def _calibrate(estimator, task: Task, seeds: int, seconds: float) -> dict:
    """A short timed run (``seconds`` of training after its compile, from the task's theta) that
    measures the outer steps per second of ``estimator``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its divergence, if any, the real run reports
        _, history = train(
            estimator,
            task.optimizer(1000),
            task.theta,
            jax.random.key(0),
            10**9,
            num_seeds=seeds,
            progress=False,
            time_limit=seconds,
        )
    return {
        "outer_steps": int(history["loss"].shape[-1]),
        "seconds": float(history["train_time_s"]),
        "compile_s": float(history["compile_s"]),
    }


def _python_call(task, names, steps, seeds, budget: Budget, seed) -> str:
    label = f"<Task {task.name!r}>" if isinstance(task, Task) else repr(task)
    amount = "" if budget.amount is None else f"={budget.amount:g}"
    return (
        f"unroll.compare({label}, estimators={names!r}, steps={steps}, seeds={seeds}, "
        f"budget={budget.kind + amount!r}, seed={seed})"
    )


def _versions() -> dict:
    import matplotlib

    return {
        "unroll": unroll.__version__,
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        "optax": optax.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(jax.devices()[0]),
    }


def _spread(values: np.ndarray) -> dict:
    values = np.asarray(values, np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "per_seed": values.tolist(),
    }


def _metric_names(history: dict) -> list[str]:
    """The scalar evaluation metrics (``eval/<name>`` arrays ``[seeds, evaluations]``), objective first."""
    names = [k[5:] for k, v in history.items() if k.startswith("eval/") and np.ndim(v) == 2]
    return sorted(names, key=lambda n: (n != "objective", n))


def _write_outputs(out_dir: str, task: Task, runs: dict, summary: dict) -> None:
    _write_csv(os.path.join(out_dir, "metrics.csv"), runs)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=_json_default)
    histories = {name: run.history for name, run in runs.items()}
    plot_curves(os.path.join(out_dir, "curves.png"), histories, task.reference, task.name)
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(report(summary))


def _json_default(value):
    """numpy scalars and arrays in settings and reference answers, as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(value).tolist()
    return str(value)


def _write_csv(path: str, runs: dict) -> None:
    metrics = sorted(
        {m for run in runs.values() for m in _metric_names(run.history)},
        key=lambda n: (n != "objective", n),
    )
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["estimator", "seed", "step", "window_loss", "grad_norm", "inner_steps"] + metrics)
        for name, run in runs.items():
            history = run.history
            num_seeds, num_steps = history["loss"].shape
            inner = np.cumsum(history["steps"], axis=1)
            evaluated = {int(s): i for i, s in enumerate(history["eval_step"])}
            for seed in range(num_seeds):
                for step in range(num_steps):
                    # metrics after `step + 1` updates, where evaluated
                    i = evaluated.get(step + 1)
                    values = [
                        "" if i is None or f"eval/{m}" not in history else f"{history[f'eval/{m}'][seed, i]:.8g}"
                        for m in metrics
                    ]
                    writer.writerow(
                        [
                            name,
                            seed,
                            step + 1,
                            f"{history['loss'][seed, step]:.8g}",
                            f"{history['grad_norm'][seed, step]:.6g}",
                            int(inner[seed, step]),
                            *values,
                        ]
                    )


def _registered(name: str) -> dict:
    """The registry's description and family of ``name`` (a task's own build has none)."""
    if name not in registry.ESTIMATORS:
        return {"description": "the task's own estimator"}
    entry = registry.ESTIMATORS[name]
    return {"description": entry.description, "estimator_family": entry.family}


def _summary(plan: _Plan, runs: dict, command: str, config: dict | None) -> dict:
    loaded, task, budget = plan.loaded, plan.loaded.task, plan.budget
    out = {
        "task": task.name,
        "task_source": loaded.source,
        "task_options": loaded.options,
        "horizon": task.system.horizon,
        "command": command,
        "config": config,
        "versions": _versions(),
        "seeds": list(range(plan.seeds)),
        "seed_keys": f"jax.random.split(jax.random.key({plan.seed}), {plan.seeds})",
        "budget": {"kind": budget.kind, "amount": budget.amount, "meaning": BUDGETS[budget.kind]},
        "outer_steps": plan.steps,
        "optimizer": task.optimizer_description,
        "settings": task.settings,
        "left_out": task.left_out,
        "reference": task.reference,
        "estimators": {name: _estimator_entry(task, run, plan.seeds) for name, run in runs.items()},
    }
    return out


def _estimator_entry(task: Task, run: _Run, seeds: int) -> dict:
    history = run.history
    entry = {
        "family": run.family,
        "truncation": run.truncation,
        **_registered(run.family),
        "settings": run.settings,
        "inner_steps_per_outer_step": int(history["steps"][0, 0]),
        "outer_steps": run.allowance.num_steps,
        "outer_steps_run": int(history["loss"].shape[-1]),
        "system_steps": int(np.sum(history["steps"][0])),
        "time_limit_s": run.allowance.time_limit,
        "calibration": run.allowance.calibration,
        "final_window_loss": _spread(history["loss"][:, -1]),
        "train_time_s": round(float(history["train_time_s"]), 2),
        "compile_s": round(float(history["compile_s"]), 2),
        "eval_steps": [int(x) for x in history["eval_step"]],
        "eval_system_steps": np.concatenate([[0], np.cumsum(history["steps"][0])])[history["eval_step"]].tolist(),
        "eval_time_s": [round(float(x), 4) for x in history["eval_time_s"]],  # training seconds at each
        # each metric's mean over seeds at each evaluation: the curves, for a plot of one's own
        "eval_mean": {m: np.mean(history[f"eval/{m}"], axis=0).tolist() for m in _metric_names(history)},
        "first_nonfinite_step": np.atleast_1d(history["first_nonfinite"]).tolist(),
    }
    for metric in _metric_names(history):
        key = "final_objective_gap" if metric == "gap" else f"final_{metric}"
        entry[key] = _spread(history[f"eval/{metric}"][:, -1])
    if task.reached is not None:
        final = {m: history[f"eval/{m}"][:, -1] for m in _metric_names(history)}
        per_seed = [
            bool(task.reached(jax.tree_util.tree_map(lambda x: x[i], run.theta), {m: v[i] for m, v in final.items()}))
            for i in range(seeds)
        ]
        entry["reached_per_seed"] = per_seed
        entry["reached"] = all(per_seed)
    return entry


# --------------------------------------------------------------------------- what a person reads


def summary_text(summary: dict) -> str:
    """The header, the reference answers, the budget and the estimators' table, as `unroll compare` prints them.

    Args:
      summary: a comparison's summary dict (`compare`'s, or `summary.json` read back).

    Returns:
      The text, lines joined by newlines (no trailing newline).
    """
    reference = summary["reference"]
    known = {k: v for k, v in reference.items() if isinstance(v, (int, float)) and k != "horizon"}
    objective = reference.get("objective", "evaluate(theta)['objective']")
    lines = [f"{summary['task']} (horizon {summary['horizon']}): objective = {objective}"]
    if known:
        lines.append("  reference: " + ", ".join(f"{k} = {v:.5g}" for k, v in known.items()))
    lines.append(f"  budget: {_budget_text(summary['budget'])}")
    for name, why in summary.get("left_out", {}).items():
        lines.append(f"  left out: {name} ({why})")
    estimators = summary["estimators"]
    reached = any("reached" in e for e in estimators.values())
    lines.append(
        f"{'estimator':>12s} {'final objective (mean ± std)':>30s} {'outer steps':>11s} {'system steps':>12s} "
        f"{'train s':>8s}  other metrics (mean){'  reached' if reached else ''}"
    )
    for name, entry in estimators.items():
        objective = entry["final_objective"]
        others = ", ".join(
            f"{k[6:]}={v['mean']:.4g}"
            for k, v in entry.items()
            if k.startswith("final_") and k not in ("final_objective", "final_window_loss") and isinstance(v, dict)
        )
        mark = "" if "reached" not in entry else ("  yes" if entry["reached"] else "  no")
        lines.append(
            f"{name:>12s} {objective['mean']:>18.5g} ± {objective['std']:<9.3g} {entry['outer_steps_run']:>11d} "
            f"{entry['system_steps']:>12d} {entry['train_time_s']:>8.2f}  {others}{mark}"
        )
    for name, entry in estimators.items():
        stopped = [(seed, step) for seed, step in enumerate(entry["first_nonfinite_step"]) if step >= 0]
        if stopped:
            where = ", ".join(f"seed {seed} at outer step {step}" for seed, step in stopped)
            lines.append(
                f"{name:>12s}: a non-finite loss or gradient ({where}); its figures are those of the last finite theta"
            )
    return "\n".join(lines)


def _budget_text(budget: dict) -> str:
    """A budget in words, e.g. `"60 seconds of training per estimator"`.

    Args:
      budget: a summary's `budget` entry, a dict with `kind` and `amount` (`None`: no amount given).

    Returns:
      The words; just the kind where the amount is `None`.
    """
    amount = budget["amount"]
    if budget["kind"] == "seconds":
        return f"{amount:g} seconds of training per estimator" if amount is not None else "seconds"
    return f"{amount:,} {budget['kind'].replace('-', ' ')} per estimator" if amount is not None else budget["kind"]


def report(summary: dict) -> str:
    """`report.md`: the table, the reference answers, the budget, the plot and the command.

    Args:
      summary: a comparison's summary dict (`compare`'s, or `summary.json` read back).

    Returns:
      The markdown text of the report.
    """
    reference = "\n".join(f"* `{k}`: {json.dumps(v, default=_json_default)}" for k, v in summary["reference"].items())
    seconds = "\n".join(
        f"| {name} | {e['outer_steps_run']} | {e['system_steps']:,} | {e['train_time_s']:.2f} | {e['compile_s']:.2f} |"
        for name, e in summary["estimators"].items()
    )
    left_out = "".join(f"* `{name}` was left out: {why}.\n" for name, why in summary.get("left_out", {}).items())
    return f"""# Comparison: {summary["task"]}

Horizon {summary["horizon"]}; {len(summary["seeds"])} seeds (`{summary["seed_keys"]}`); \
budget: {_budget_text(summary["budget"])} ({summary["budget"]["meaning"]}); optimizer: {summary["optimizer"]}.
Task from {summary["task_source"]}, options {json.dumps(summary["task_options"], default=_json_default)}.

```text
{summary_text(summary)}
```

| estimator | outer steps | system steps | training s | compile s |
|---|---:|---:|---:|---:|
{seconds}

{left_out}
## Reference answers

{reference}

## Curves

![objective against outer steps, system steps and training time](curves.png)

Per step and seed: [`metrics.csv`](metrics.csv); every setting: [`summary.json`](summary.json).

## Reproduce

```bash
{summary["command"]}
```

unroll {summary["versions"]["unroll"]}, jax {summary["versions"]["jax"]} on {summary["versions"]["device"]}, \
Python {summary["versions"]["python"]}.
"""
