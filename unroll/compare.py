"""Side-by-side runs of estimators on one task: ``unroll compare TASK``.

Each estimator is trained from the task's initial theta with its optimizer for the
same number of outer steps over several seeds (the seeds are a vmap axis of one
compiled outer step). Written to the output folder:

* ``metrics.csv``: one row per (estimator, seed, outer step): window loss, gradient
  norm, cumulative inner steps and, where evaluated, the task's objective and its
  other scalar metrics (theta itself when it is a scalar). It holds no wall-clock
  figures (``summary.json`` has them), so the same command and seed write the same
  file, byte for byte;
* ``summary.json``: the command, versions, seeds, settings, the task's reference
  answers and per estimator the final objective and metrics (mean, spread, per seed),
  training and compile seconds, and the training seconds at each evaluated step;
* ``curves.png``: the objective against outer steps, inner steps and wall time
  (mean and min-max band over seeds);
* ``checkpoints/<estimator>.npz``: each estimator's whole run (``unroll.train``'s
  checkpoint, format in ``unroll.resume``), saved every ``checkpoint_every`` outer
  steps, at its end and on Ctrl-C / SIGTERM. Running the same comparison into the same
  folder again resumes: finished estimators are read back, an interrupted one goes on
  from its checkpoint, bit for bit as if never stopped.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
import optax

import unroll
from unroll import registry
from unroll.plotting import plot_curves
from unroll.tasks.hyper import DEFAULT_ESTIMATORS as HYPER_ESTIMATORS
from unroll.tasks.hyper import lr_schedule_setup, mlp_hyper_setup
from unroll.tasks.influence import DEFAULT_ESTIMATORS as INFLUENCE_ESTIMATORS
from unroll.tasks.influence import influence_balancing_setup
from unroll.tasks.lopt import DEFAULT_ESTIMATORS as LOPT_ESTIMATORS
from unroll.tasks.lopt import lopt_digits_setup, lopt_quadratic_setup
from unroll.tasks.lorenz import DEFAULT_ESTIMATORS as LORENZ_ESTIMATORS
from unroll.tasks.lorenz import lorenz_setup
from unroll.tasks.rnn import DEFAULT_ESTIMATORS as RNN_ESTIMATORS
from unroll.tasks.rnn import char_lm_setup, copy_setup, flip_flop_setup, long_dependency_setup
from unroll.tasks.setup import TaskSetup
from unroll.tasks.setup import standard_settings as standard_settings  # re-exported: compare.standard_settings
from unroll.train import train

TASKS: dict[str, Callable[..., TaskSetup]] = {
    "influence-balancing": influence_balancing_setup,
    "copy": copy_setup,
    "flip-flop": flip_flop_setup,
    "char-lm": char_lm_setup,
    "long-dependency": long_dependency_setup,
    "lorenz": lorenz_setup,
    "lr-schedule": lr_schedule_setup,
    "mlp-hyper": mlp_hyper_setup,
    "lopt-digits": lopt_digits_setup,
    "lopt-quadratic": lopt_quadratic_setup,
}

# the estimators `unroll compare TASK` runs when none are named (each task module's list)
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    **INFLUENCE_ESTIMATORS,
    **RNN_ESTIMATORS,
    **LORENZ_ESTIMATORS,
    **HYPER_ESTIMATORS,
    **LOPT_ESTIMATORS,
}


def parse_estimator(name: str, setup: TaskSetup) -> tuple[str, int | None]:
    """``"tbptt-10"`` -> ``("tbptt", 10)``; ``"pes"`` -> ``("pes", the task's truncation)``;
    ``("full-bptt", None)`` for estimators of whole episodes. Names are the registry's."""
    match = re.fullmatch(r"([a-z][a-z-]*?)(?:-(\d+))?", name)
    family = match.group(1) if match else name
    if not match or family not in {**registry.ESTIMATORS, **setup.estimators}:
        known = ", ".join(sorted({**registry.ESTIMATORS, **setup.estimators}))
        raise ValueError(f"unknown estimator {name!r}; choose from {known} (add -K for a truncation, e.g. tbptt-10).")
    windowed = registry.ESTIMATORS[family].windowed if family in registry.ESTIMATORS else True
    if match.group(2) is None:
        return family, setup.settings["truncation"] if windowed else None
    if not windowed:
        raise ValueError(f"estimator {family!r} takes no truncation; write {family!r} without -{match.group(2)}.")
    truncation = int(match.group(2))
    if not 1 <= truncation <= setup.system.horizon:
        raise ValueError(
            f"estimator {name!r}: truncation {truncation} must lie in [1, horizon={setup.system.horizon}]."
        )
    return family, truncation


def build_estimator(setup: TaskSetup, name: str, truncation: int | None):
    """The task's own build of ``name`` if it has one, else the registry's with the task's
    shared settings (and ``truncation``, for a windowed one)."""
    if name in setup.estimators:
        return setup.estimators[name](setup.system, truncation)
    settings = setup.settings if truncation is None else {**setup.settings, "truncation": truncation}
    return registry.build(name, setup.system, **settings)


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


def _check_run(setup: TaskSetup, seeds, steps, checkpoint_every, seed) -> tuple[int, int, int]:
    """The checked ``(seeds, steps, checkpoint_every)`` of a comparison (the task's
    defaults where None; a checkpoint every tenth of the run by default)."""
    seeds = unroll.system.check_positive_int(setup.default_seeds if seeds is None else seeds, "seeds")
    steps = unroll.system.check_positive_int(setup.default_steps if steps is None else steps, "steps")
    if checkpoint_every is None:
        checkpoint_every = max(1, steps // 10)
    checkpoint_every = unroll.system.check_positive_int(checkpoint_every, "checkpoint_every")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed`={seed!r} must be a non-negative int (the base of the seeds' keys), e.g. --seed 0.")
    return seeds, steps, checkpoint_every


def compare(
    task: str,
    estimators: list[str] | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    out_dir: str | None = None,
    progress: bool = True,
    task_kwargs: dict | None = None,
    command: str | None = None,
    seed: int = 0,
    checkpoint_every: int | None = None,
    tensorboard: str | None = None,
) -> tuple[str, dict]:
    """Runs every estimator on ``task`` and writes CSV, JSON and PNG to ``out_dir``.

    Seeds are ``split(key(seed), seeds)``. Each estimator's run is checkpointed to
    ``out_dir/checkpoints/`` every ``checkpoint_every`` outer steps (default: a tenth
    of the run) and on interrupt; an ``out_dir`` that holds checkpoints of the same
    comparison resumes from them (one of another comparison is refused). An estimator
    whose loss or gradient turns non-finite stops there (the warning and the summary's
    ``first_nonfinite_step`` say where) and the others go on. With ``tensorboard``, each
    estimator's metrics are also streamed to ``tensorboard/<estimator>/seed<i>``
    (``unroll.logging.tensorboard``; an estimator read back finished from its checkpoint
    writes nothing new).

    Returns the output folder and the summary dict.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(sorted(TASKS))}.")
    setup = TASKS[task](**(task_kwargs or {}))
    names = estimators or setup.default_estimators
    parsed = [parse_estimator(name, setup) for name in names]  # all errors before any run
    seeds, steps, checkpoint_every = _check_run(setup, seeds, steps, checkpoint_every, seed)
    out_dir = out_dir or os.path.join("runs", f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)
    eval_every = max(1, steps // 100)  # about 100 evaluations per run (some tasks evaluate whole inner runs)

    writers = (
        {name: unroll.logging.tensorboard(os.path.join(tensorboard, name)) for name in names} if tensorboard else {}
    )
    results = {}
    for name, (family, truncation) in zip(names, parsed):
        theta, history = train(
            build_estimator(setup, family, truncation),
            setup.optimizer(steps),
            setup.theta,
            jax.random.key(seed),
            steps,
            num_seeds=seeds,
            eval_fn=setup.evaluate,
            eval_every=eval_every,
            progress=progress,
            name=f"{name:>10s}",
            checkpoint=os.path.join(out_dir, "checkpoints", f"{name}.npz"),
            checkpoint_every=checkpoint_every,
            run_info={"task": task, "estimator": name, "task_options": json.dumps(task_kwargs or {}, sort_keys=True)},
            callback=writers.get(name),
            callback_every=eval_every,
        )
        if name in writers:
            writers[name].close()
        results[name] = (theta, history, family, truncation)

    _write_csv(os.path.join(out_dir, "metrics.csv"), results)
    summary = _summary(task, setup, results, seeds, steps, command, seed)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot_curves(os.path.join(out_dir, "curves.png"), results, setup.reference, task)
    return out_dir, summary


def _metric_names(history: dict) -> list[str]:
    """The scalar evaluation metrics (``eval/<name>`` arrays ``[seeds, evaluations]``), objective first."""
    names = [k[5:] for k, v in history.items() if k.startswith("eval/") and np.ndim(v) == 2]
    return sorted(names, key=lambda n: (n != "objective", n))


def _write_csv(path: str, results: dict) -> None:
    metrics = sorted(
        {m for _, history, _, _ in results.values() for m in _metric_names(history)},
        key=lambda n: (n != "objective", n),
    )
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["estimator", "seed", "step", "window_loss", "grad_norm", "inner_steps"] + metrics)
        for name, (_, history, _, _) in results.items():
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


def _summary(task, setup, results, seeds, steps, command, seed=0) -> dict:
    out = {
        "task": task,
        "command": command or " ".join(["unroll"] + sys.argv[1:]),
        "versions": _versions(),
        "seeds": list(range(seeds)),
        "seed_keys": f"jax.random.split(jax.random.key({seed}), {seeds})",
        "outer_steps": steps,
        "optimizer": setup.optimizer_description,
        "reference": setup.reference,
        "estimators": {},
    }
    for name, (theta, history, family, truncation) in results.items():
        entry = {
            "family": family,
            "truncation": truncation,
            **_registered(family),
            "inner_steps_per_outer_step": int(history["steps"][0, 0]),
            "final_window_loss": _spread(history["loss"][:, -1]),
            "train_time_s": round(float(history["train_time_s"]), 2),
            "compile_s": round(float(history["compile_s"]), 2),
            "eval_steps": [int(x) for x in history["eval_step"]],
            "eval_time_s": [round(float(x), 4) for x in history["eval_time_s"]],  # training seconds at each
            "first_nonfinite_step": np.atleast_1d(history["first_nonfinite"]).tolist(),
            "outer_steps_run": int(history["loss"].shape[-1]),
        }
        for metric in _metric_names(history):
            key = "final_objective_gap" if metric == "gap" else f"final_{metric}"
            entry[key] = _spread(history[f"eval/{metric}"][:, -1])
        if setup.reached is not None:
            final = {m: history[f"eval/{m}"][:, -1] for m in _metric_names(history)}
            per_seed = [
                bool(setup.reached(jax.tree_util.tree_map(lambda x: x[i], theta), {m: v[i] for m, v in final.items()}))
                for i in range(seeds)
            ]
            entry["reached_per_seed"] = per_seed
            entry["reached"] = all(per_seed)
        out["estimators"][name] = entry
    return out
