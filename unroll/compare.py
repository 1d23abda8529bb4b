"""Side-by-side runs of estimators on one task: ``unroll compare TASK``.

Each estimator is trained from the task's initial theta with its optimizer for the
same number of outer steps over several seeds (the seeds are a vmap axis of one
compiled outer step). Written to the output folder:

* ``metrics.csv``: one row per (estimator, seed, outer step): window loss, exact
  objective, theta (for scalar theta), gradient norm, cumulative inner steps;
* ``summary.json``: the command, versions, seeds, settings, the reference optimum
  and per estimator the final theta and objective (mean, spread, per seed);
* ``curves.png``: objective and theta against outer steps (mean and min-max band).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unroll
from unroll import tasks
from unroll.train import train
from unroll.window import Estimator


class EstimatorSpec(NamedTuple):
    """How a task runs one estimator: ``build(system, truncation)`` and its optimizer."""

    build: Callable[[Any, int], Estimator]
    default_truncation: int | None  # None: the estimator has no truncation
    description: str


class TaskSetup(NamedTuple):
    """Everything ``compare`` needs about a task."""

    system: Any
    theta: Any
    evaluate: Callable[[Any], dict]  # theta -> {"objective": L(theta), "gap": L - L*, "theta"}, jit-able
    reference: dict  # known answers (e.g. the optimum), written to the summary
    estimators: dict[str, EstimatorSpec]
    default_estimators: list[str]
    optimizer: Callable[[int], optax.GradientTransformation]  # from the number of outer steps
    default_steps: int
    default_seeds: int
    tolerance: float  # |theta - theta*| that counts as reaching the optimum


def influence_balancing_setup(horizon: int = 1000) -> TaskSetup:
    """Influence balancing with the settings of the main job (Vicol et al. 2021, Sec. 5.1)."""
    system = tasks.influence_balancing(horizon)
    objective, gap = tasks.influence_loss_fn(horizon), tasks.influence_gap_fn(horizon)
    optimum = tasks.influence_optimum(horizon)
    particles, workers, sigma = 100, 10, 0.1  # 1000 particles in all, as Vicol et al.
    estimators = {
        "full-bptt": EstimatorSpec(lambda s, k: unroll.full_bptt(s), None, "exact gradient of whole episodes"),
        "tbptt": EstimatorSpec(
            lambda s, k: unroll.truncated_bptt(s, k, num_workers=workers), 10, "truncated BPTT (biased)"
        ),
        "tes": EstimatorSpec(
            lambda s, k: unroll.truncated_es(s, k, sigma, particles, num_workers=workers), 10, "truncated ES (biased)"
        ),
        "pes": EstimatorSpec(
            lambda s, k: unroll.pes(s, k, sigma, particles, num_workers=workers), 10, "persistent ES (unbiased)"
        ),
        "nres": EstimatorSpec(
            lambda s, k: unroll.nres(s, k, sigma, particles, num_workers=workers), 10, "noise-reuse ES (unbiased)"
        ),
        "forward": EstimatorSpec(
            lambda s, k: unroll.forward_gradient(s, k, num_directions=10, num_workers=workers),
            10,
            "forward gradient (unbiased)",
        ),
        "rtrl": EstimatorSpec(
            lambda s, k: unroll.rtrl(s, k, num_workers=workers), 10, "real-time recurrent learning (exact, online)"
        ),
        "uoro": EstimatorSpec(
            lambda s, k: unroll.uoro(s, k, num_workers=workers), 10, "unbiased rank-one RTRL (high variance)"
        ),
        "snap": EstimatorSpec(
            lambda s, k: unroll.snap(s, 1, k, num_workers=workers), 10, "SnAp-1 (sparse RTRL, order 1)"
        ),
        "dni": EstimatorSpec(
            lambda s, k: unroll.dni(s, k, num_workers=workers), 10, "truncated BPTT + learned synthetic gradient"
        ),
        "checkpointed-bptt": EstimatorSpec(
            lambda s, k: unroll.checkpointed_bptt(s, memory_budget=10), None, "full BPTT in 10 stored states"
        ),
        "es": EstimatorSpec(lambda s, k: unroll.es(s, sigma, particles), None, "ES over whole episodes"),
    }
    return TaskSetup(
        system=system,
        theta=jnp.asarray(tasks.THETA_INIT, jnp.float32),
        evaluate=lambda theta: {"objective": objective(theta), "gap": gap(theta), "theta": theta},
        reference={
            "theta_star": optimum,
            "objective_at_theta_star": float(objective(optimum)),
            "theta_star_steady_state": -1.0 / 6.0,
            "horizon": horizon,
        },
        estimators=estimators,
        default_estimators=["tbptt-1", "tbptt-10", "tbptt-100", "tes", "pes", "nres", "forward", "rtrl", "full-bptt"],
        optimizer=lambda steps: optax.adam(optax.cosine_decay_schedule(1e-2, steps, alpha=0.01)),
        default_steps=500,
        default_seeds=3,
        tolerance=0.02,
    )


TASKS: dict[str, Callable[..., TaskSetup]] = {"influence-balancing": influence_balancing_setup}


def parse_estimator(name: str, setup: TaskSetup) -> tuple[str, int | None]:
    """``"tbptt-10"`` -> ``("tbptt", 10)``; ``"pes"`` -> ``("pes", default truncation)``."""
    match = re.fullmatch(r"([a-z][a-z-]*?)(?:-(\d+))?", name)
    family = match.group(1) if match else name
    if not match or family not in setup.estimators:
        known = ", ".join(sorted(setup.estimators))
        raise ValueError(f"unknown estimator {name!r}; choose from {known} (add -K for a truncation, e.g. tbptt-10).")
    spec = setup.estimators[family]
    if match.group(2) is None:
        return family, spec.default_truncation
    if spec.default_truncation is None:
        raise ValueError(f"estimator {family!r} takes no truncation; write {family!r} without -{match.group(2)}.")
    truncation = int(match.group(2))
    if not 1 <= truncation <= setup.system.horizon:
        raise ValueError(
            f"estimator {name!r}: truncation {truncation} must lie in [1, horizon={setup.system.horizon}]."
        )
    return family, truncation


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


def compare(
    task: str,
    estimators: list[str] | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    out_dir: str | None = None,
    progress: bool = True,
    task_kwargs: dict | None = None,
    command: str | None = None,
) -> tuple[str, dict]:
    """Runs every estimator on ``task`` and writes CSV, JSON and PNG to ``out_dir``.

    Returns the output folder and the summary dict.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(sorted(TASKS))}.")
    setup = TASKS[task](**(task_kwargs or {}))
    names = estimators or setup.default_estimators
    parsed = [parse_estimator(name, setup) for name in names]  # all errors before any run
    seeds = unroll.system.check_positive_int(setup.default_seeds if seeds is None else seeds, "seeds")
    steps = unroll.system.check_positive_int(setup.default_steps if steps is None else steps, "steps")
    out_dir = out_dir or os.path.join("runs", f"{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(out_dir, exist_ok=True)
    eval_every = max(1, steps // 500)

    results = {}
    for name, (family, truncation) in zip(names, parsed):
        estimator = setup.estimators[family].build(setup.system, truncation)
        start = time.perf_counter()
        theta, history = train(
            estimator,
            setup.optimizer(steps),
            setup.theta,
            jax.random.key(0),
            steps,
            num_seeds=seeds,
            eval_fn=setup.evaluate,
            eval_every=eval_every,
            progress=progress,
            name=f"{name:>10s}",
        )
        history["wall_time_s"] = time.perf_counter() - start
        results[name] = (theta, history, family, truncation)

    _write_csv(os.path.join(out_dir, "metrics.csv"), results)
    summary = _summary(task, setup, results, seeds, steps, command)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    plot_curves(os.path.join(out_dir, "curves.png"), results, setup.reference, task)
    return out_dir, summary


def _write_csv(path: str, results: dict) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["estimator", "seed", "step", "window_loss", "grad_norm", "inner_steps", "objective", "theta"])
        for name, (_, history, _, _) in results.items():
            num_seeds, num_steps = history["loss"].shape
            inner = np.cumsum(history["steps"], axis=1)
            evaluated = {int(s): i for i, s in enumerate(history["eval_step"])}
            for seed in range(num_seeds):
                for step in range(num_steps):
                    # objective and theta after `step + 1` updates, where evaluated
                    i = evaluated.get(step + 1)
                    objective = "" if i is None else f"{history['eval/objective'][seed, i]:.8g}"
                    theta = "" if i is None else f"{history['eval/theta'][seed, i]:.8g}"
                    writer.writerow([
                        name, seed, step + 1, f"{history['loss'][seed, step]:.8g}",
                        f"{history['grad_norm'][seed, step]:.6g}", int(inner[seed, step]), objective, theta,
                    ])


def _summary(task, setup, results, seeds, steps, command) -> dict:
    theta_star = setup.reference.get("theta_star")
    out = {
        "task": task,
        "command": command or " ".join(["unroll"] + sys.argv[1:]),
        "versions": _versions(),
        "seeds": list(range(seeds)),
        "seed_keys": f"jax.random.split(jax.random.key(0), {seeds})",
        "outer_steps": steps,
        "optimizer": "adam, learning rate 1e-2 cosine-decayed to 1e-4 over the outer steps",
        "reference": setup.reference,
        "estimators": {},
    }
    for name, (theta, history, family, truncation) in results.items():
        final_theta = np.asarray(theta, np.float64).reshape(seeds, -1)[:, 0]
        entry = {
            "family": family,
            "truncation": truncation,
            "description": setup.estimators[family].description,
            "inner_steps_per_outer_step": int(history["steps"][0, 0]),
            "final_theta": _spread(final_theta),
            "final_objective": _spread(history["eval/objective"][:, -1]),
            "final_objective_gap": _spread(history["eval/gap"][:, -1]),
            "final_window_loss": _spread(history["loss"][:, -1]),
            "wall_time_s": round(float(history["wall_time_s"]), 2),
            "first_nonfinite_step": np.atleast_1d(history["first_nonfinite"]).tolist(),
        }
        if theta_star is not None:
            distance = np.abs(final_theta - theta_star)
            entry["distance_to_theta_star"] = _spread(distance)
            entry["reached_theta_star"] = bool(np.all(distance < setup.tolerance))
        out["estimators"][name] = entry
    return out


def plot_curves(path: str, results: dict, reference: dict, title: str) -> None:
    """Objective gap ``L(theta) - L(theta*)`` (log scale) and theta against outer steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_theta) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, (_, history, _, _) in results.items():
        x = history["eval_step"]
        gap = np.maximum(history["eval/gap"], 1e-14)
        theta = history["eval/theta"].reshape(gap.shape)
        for ax, y in ((ax_loss, gap), (ax_theta, theta)):
            (line,) = ax.plot(x, y.mean(axis=0), label=name)
            ax.fill_between(x, y.min(axis=0), y.max(axis=0), color=line.get_color(), alpha=0.2)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("outer step")
    ax_loss.set_ylabel("L(theta) - L(theta*)")
    ax_loss.set_title(f"{title}: objective gap")
    if "theta_star" in reference:
        ax_theta.axhline(reference["theta_star"], color="k", ls="--", lw=1, label="theta* (horizon)")
    ax_theta.set_xlabel("outer step")
    ax_theta.set_ylabel("theta")
    ax_theta.set_title("theta (mean, min-max over seeds)")
    ax_theta.set_yscale("symlog", linthresh=0.5)
    ax_theta.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
