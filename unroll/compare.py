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
from typing import Any, NamedTuple

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
    evaluate: Callable[[Any], dict]  # theta -> {"objective": ..., other scalar metrics}, jit-able
    reference: dict  # known answers (e.g. the optimum) and what the objective is, written to the summary
    estimators: dict[str, EstimatorSpec]
    default_estimators: list[str]
    optimizer: Callable[[int], optax.GradientTransformation]  # from the number of outer steps
    optimizer_description: str
    default_steps: int
    default_seeds: int
    # (final theta of one seed, its final metrics) -> reached the known answer? None: no known answer
    reached: Callable[[Any, dict], bool] | None = None


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "influence-balancing": ["tbptt-1", "tbptt-10", "tbptt-100", "tes", "pes", "nres", "forward", "rtrl", "full-bptt"],
    "copy": ["tbptt-5", "full-bptt", "uoro", "dni-5", "pes", "forward"],
    "flip-flop": ["tbptt-10", "full-bptt", "uoro", "dni", "pes", "forward"],
    "char-lm": ["tbptt-16", "full-bptt", "dni-16", "uoro-16", "pes-16"],
    "lorenz": ["full-bptt", "tbptt-10", "pes", "es"],
    "lr-schedule": ["tbptt-10", "tes", "pes", "nres", "es", "full-bptt"],
    "mlp-hyper": ["tbptt-10", "pes", "es", "full-bptt"],
    "lopt-digits": ["pes", "tbptt-10", "es", "full-bptt"],
    "lopt-quadratic": ["pes", "tbptt-10", "es", "full-bptt"],
}


def standard_estimators(
    workers: int = 10,
    particles: int = 100,
    sigma: float = 0.1,
    truncation: int = 10,
    directions: int = 10,
    memory_budget: int = 10,
) -> dict[str, EstimatorSpec]:
    """Every estimator family, with the given workers, particles, sigma and default truncation."""
    k = truncation
    return {
        "full-bptt": EstimatorSpec(lambda s, _: unroll.full_bptt(s), None, "exact gradient of whole episodes"),
        "tbptt": EstimatorSpec(
            lambda s, k: unroll.truncated_bptt(s, truncation=k, num_workers=workers), k, "truncated BPTT (biased)"
        ),
        "tes": EstimatorSpec(
            lambda s, k: unroll.truncated_es(
                s, truncation=k, sigma=sigma, num_particles=particles, num_workers=workers
            ),
            k,
            "truncated ES (biased)",
        ),
        "pes": EstimatorSpec(
            lambda s, k: unroll.pes(s, truncation=k, sigma=sigma, num_particles=particles, num_workers=workers),
            k,
            "persistent ES (unbiased)",
        ),
        "nres": EstimatorSpec(
            lambda s, k: unroll.nres(s, truncation=k, sigma=sigma, num_particles=particles, num_workers=workers),
            k,
            "noise-reuse ES (unbiased)",
        ),
        "forward": EstimatorSpec(
            lambda s, k: unroll.forward_gradient(s, truncation=k, num_workers=workers, num_directions=directions),
            k,
            "forward gradient (unbiased)",
        ),
        "rtrl": EstimatorSpec(
            lambda s, k: unroll.rtrl(s, truncation=k, num_workers=workers),
            k,
            "real-time recurrent learning (exact, online)",
        ),
        "uoro": EstimatorSpec(
            lambda s, k: unroll.uoro(s, truncation=k, num_workers=workers), k, "unbiased rank-one RTRL (high variance)"
        ),
        "snap": EstimatorSpec(
            lambda s, k: unroll.snap(s, truncation=k, num_workers=workers, order=1), k, "SnAp-1 (sparse RTRL, order 1)"
        ),
        "dni": EstimatorSpec(
            lambda s, k: unroll.dni(s, truncation=k, num_workers=workers),
            k,
            "truncated BPTT + learned synthetic gradient",
        ),
        "checkpointed-bptt": EstimatorSpec(
            lambda s, _: unroll.checkpointed_bptt(s, memory_budget=memory_budget),
            None,
            f"full BPTT in {memory_budget} stored states",
        ),
        "es": EstimatorSpec(
            lambda s, _: unroll.es(s, sigma=sigma, num_particles=particles), None, "ES over whole episodes"
        ),
    }


def _adam_cosine(learning_rate: float) -> dict:
    """Adam with a cosine-decayed learning rate (to 1% over the outer steps), as TaskSetup fields."""
    return {
        "optimizer": lambda steps: optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01)),
        "optimizer_description": f"adam, learning rate {learning_rate:g} cosine-decayed to "
        f"{learning_rate / 100:g} over the outer steps",
    }


def influence_balancing_setup(horizon: int = 1000) -> TaskSetup:
    """Influence balancing with the settings of the main job (Vicol et al. 2021, Sec. 5.1)."""
    system = tasks.influence_balancing(horizon)
    objective, gap = tasks.influence_loss_fn(horizon), tasks.influence_gap_fn(horizon)
    optimum = tasks.influence_optimum(horizon)
    tolerance = 0.02
    return TaskSetup(
        system=system,
        theta=jnp.asarray(tasks.THETA_INIT, jnp.float32),
        evaluate=lambda theta: {"objective": objective(theta), "gap": gap(theta), "theta": theta},
        reference={
            "objective": "exact mean episode loss L(theta) (closed form); gap = L(theta) - L(theta*)",
            "theta_star": optimum,
            "objective_at_theta_star": float(objective(optimum)),
            "theta_star_steady_state": -1.0 / 6.0,
            "horizon": horizon,
            "tolerance": tolerance,
        },
        # 1000 particles in all (10 workers x 100), as Vicol et al.
        estimators=standard_estimators(workers=10, particles=100, sigma=0.1, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["influence-balancing"],
        **_adam_cosine(1e-2),
        default_steps=500,
        default_seeds=3,
        reached=lambda theta, metrics: abs(float(theta) - optimum) < tolerance,
    )


def _network_setup(
    made,
    reference: dict,
    learning_rate: float,
    defaults: list[str],
    steps: int,
    truncation: int,
    sigma: float,
    particles: int,
    workers: int = 4,
) -> TaskSetup:
    system, theta, evaluate = made
    return TaskSetup(
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference=dict(reference, horizon=system.horizon),
        estimators=standard_estimators(
            workers=workers, particles=particles, sigma=sigma, truncation=truncation, directions=4
        ),
        default_estimators=defaults,
        **_adam_cosine(learning_rate),
        default_steps=steps,
        default_seeds=2,
    )


def copy_setup(horizon: int | None = None, length: int = 5, cell: str = "gru", hidden: int = 32) -> TaskSetup:
    """Copy task: recall 5 symbols (of 4) after a delay; horizon = 2 * length + delay."""
    delay = 10 if horizon is None else horizon - 2 * length
    if delay < 1:
        raise ValueError(f"`horizon`={horizon} must exceed 2 * length = {2 * length} for the copy task.")
    made = tasks.copy_task(length=length, delay=delay, num_symbols=4, cell=cell, hidden=hidden)
    reference = {
        "objective": "mean step cross-entropy (nats) on 64 held-out sequences",
        "memoryless_loss": tasks.copy_memoryless_loss(length, delay, 4),
        "cell": cell,
        "hidden": hidden,
    }
    return _network_setup(
        made, reference, 3e-3, DEFAULT_ESTIMATORS["copy"], 300, truncation=5, sigma=0.01, particles=16
    )


def flip_flop_setup(horizon: int = 100, cell: str = "gru", hidden: int = 32) -> TaskSetup:
    """3-bit flip-flop: hold the sign of each channel's last pulse."""
    made = tasks.flip_flop(num_bits=3, horizon=horizon, pulse_probability=0.05, cell=cell, hidden=hidden)
    reference = {
        "objective": "mean step binary cross-entropy (nats, summed over 3 bits) on 64 held-out sequences",
        "chance_loss": 3 * float(np.log(2)),
        "cell": cell,
        "hidden": hidden,
    }
    return _network_setup(
        made, reference, 3e-3, DEFAULT_ESTIMATORS["flip-flop"], 300, truncation=10, sigma=0.01, particles=16
    )


def char_lm_setup(horizon: int = 64, cell: str = "lstm", hidden: int = 64) -> TaskSetup:
    """Character LM on Python's bundled help text (pydoc_data.topics)."""
    made = tasks.char_lm(horizon=horizon, cell=cell, hidden=hidden, embedding=16)
    reference = {
        "objective": "validation cross-entropy (nats per character); bits_per_char = objective / ln 2",
        "uniform_bits_per_char": float(np.log2(tasks.python_docs_corpus().vocab_size)),
        "cell": cell,
        "hidden": hidden,
    }
    return _network_setup(
        made, reference, 3e-3, DEFAULT_ESTIMATORS["char-lm"], 3000, truncation=16, sigma=0.01, particles=16
    )


def lorenz_setup(horizon: int = 200) -> TaskSetup:
    """Lorenz-63 parameter estimation (sigma, rho, beta) from an observed trajectory (chaotic)."""
    system, theta, evaluate = tasks.lorenz(horizon=horizon)
    return TaskSetup(
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean squared state error over 32 fixed episodes",
            "theta_true": list(tasks.TRUE_PARAMS),
            "horizon": horizon,
        },
        estimators=standard_estimators(workers=4, particles=50, sigma=0.3, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["lorenz"],
        **_adam_cosine(0.1),
        default_steps=300,
        default_seeds=2,
        reached=lambda theta, metrics: float(metrics["param_error"]) < 0.5,
    )


def lr_schedule_setup(horizon: int = 200) -> TaskSetup:
    """Tune SGD's learning-rate schedule lr0 / (1 + decay t) (log10 scale) on ill-conditioned regression."""
    system, theta, evaluate = tasks.lr_schedule(horizon=horizon)
    _, best, best_loss = tasks.lr_schedule_grid(evaluate, np.linspace(-3, 0.5, 36), np.linspace(-4, 0, 21))

    def metrics(theta):
        return {**evaluate(theta), "log10_lr0": theta[0], "log10_decay": theta[1]}

    return TaskSetup(
        system=system,
        theta=theta,
        evaluate=metrics,
        reference={
            "objective": "mean full-batch training loss over the run (32 fixed minibatch streams)",
            "grid_best_theta": best.tolist(),
            "grid_best_objective": best_loss,
            "grid": "log10 lr0 in linspace(-3, 0.5, 36) x log10 decay in linspace(-4, 0, 21)",
            "horizon": horizon,
        },
        estimators=standard_estimators(workers=4, particles=50, sigma=0.1, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["lr-schedule"],
        **_adam_cosine(5e-2),
        default_steps=1000,
        default_seeds=2,
        reached=lambda theta, m: float(m["objective"]) <= 1.02 * best_loss,
    )


def mlp_hyper_setup(horizon: int = 200) -> TaskSetup:
    """Tune SGD's learning rate, momentum and weight decay training an MLP on digits."""
    system, theta, evaluate = tasks.mlp_hyperparameters(horizon=horizon)
    return TaskSetup(
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean validation loss over the run (16 fixed inits and minibatch streams)",
            "horizon": horizon,
            "theta": "[log10 lr, logit momentum, log10 weight decay]",
        },
        estimators=standard_estimators(workers=4, particles=32, sigma=0.1, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["mlp-hyper"],
        **_adam_cosine(3e-2),
        default_steps=200,
        default_seeds=2,
    )


def _lopt_setup(problem: str, horizon: int) -> TaskSetup:
    system, theta, evaluate = tasks.learned_optimizer(problem, horizon=horizon)
    adam = tasks.adam_baseline(problem, horizon=horizon)
    best = adam["best"]["objective"]
    return TaskSetup(
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean inner training loss over the run on 16 held-out inner tasks",
            "horizon": horizon,
            "sgd_objective": float(evaluate(theta)["objective"]),
            "adam_tuned_objective": best,
            "adam_best_log10_learning_rate": adam["best_log10_learning_rate"],
            "adam_tuned": adam["best"],
        },
        estimators=standard_estimators(workers=4, particles=16, sigma=0.01, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS[f"lopt-{problem}"],
        **_adam_cosine(3e-3),
        default_steps=300,
        default_seeds=2,
        reached=lambda theta, metrics: float(metrics["objective"]) <= best,
    )


def lopt_digits_setup(horizon: int = 200) -> TaskSetup:
    """Meta-train a per-parameter MLP optimizer on MLP training on digits (vs tuned Adam)."""
    return _lopt_setup("digits", horizon)


def lopt_quadratic_setup(horizon: int = 100) -> TaskSetup:
    """Meta-train a per-parameter MLP optimizer on random 20-d quadratics (vs tuned Adam)."""
    return _lopt_setup("quadratic", horizon)


TASKS: dict[str, Callable[..., TaskSetup]] = {
    "influence-balancing": influence_balancing_setup,
    "copy": copy_setup,
    "flip-flop": flip_flop_setup,
    "char-lm": char_lm_setup,
    "lorenz": lorenz_setup,
    "lr-schedule": lr_schedule_setup,
    "mlp-hyper": mlp_hyper_setup,
    "lopt-digits": lopt_digits_setup,
    "lopt-quadratic": lopt_quadratic_setup,
}


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
    seed: int = 0,
    checkpoint_every: int | None = None,
) -> tuple[str, dict]:
    """Runs every estimator on ``task`` and writes CSV, JSON and PNG to ``out_dir``.

    Seeds are ``split(key(seed), seeds)``. Each estimator's run is checkpointed to
    ``out_dir/checkpoints/`` every ``checkpoint_every`` outer steps (default: a tenth
    of the run) and on interrupt; an ``out_dir`` that holds checkpoints of the same
    comparison resumes from them (one of another comparison is refused). An estimator
    whose loss or gradient turns non-finite stops there (the warning and the summary's
    ``first_nonfinite_step`` say where) and the others go on.

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
    eval_every = max(1, steps // 100)  # about 100 evaluations per run (some tasks evaluate whole inner runs)
    if checkpoint_every is None:
        checkpoint_every = max(1, steps // 10)
    checkpoint_every = unroll.system.check_positive_int(checkpoint_every, "checkpoint_every")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed`={seed!r} must be a non-negative int (the base of the seeds' keys), e.g. --seed 0.")

    results = {}
    for name, (family, truncation) in zip(names, parsed):
        estimator = setup.estimators[family].build(setup.system, truncation)
        theta, history = train(
            estimator,
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
        )
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
            "description": setup.estimators[family].description,
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


def plot_curves(path: str, results: dict, reference: dict, title: str) -> None:
    """The objective (its gap to the optimum where known, log scale) against outer steps,
    inner steps and training wall time; mean and min-max band over seeds. A scalar theta
    gets a fourth panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = [h for _, h, _, _ in results.values()]
    use_gap = all("eval/gap" in h for h in histories)
    show_theta = all("eval/theta" in h and h["eval/theta"].ndim == 2 for h in histories)
    fig, axes = plt.subplots(1, 3 + show_theta, figsize=(5 * (3 + show_theta), 4.2))
    for name, (_, history, _, _) in results.items():
        y = np.maximum(history["eval/gap"], 1e-14) if use_gap else history["eval/objective"]
        steps = history["eval_step"]
        inner = np.concatenate([[0], np.cumsum(history["steps"][0])])[steps]
        xs = [steps, inner, history["eval_time_s"]]
        ys = [y, y, y]
        if show_theta:
            xs.append(steps)
            ys.append(history["eval/theta"])
        for ax, x, v in zip(axes, xs, ys):
            (line,) = ax.plot(x, v.mean(axis=0), label=name)
            ax.fill_between(x, v.min(axis=0), v.max(axis=0), color=line.get_color(), alpha=0.2)
    ylabel = "L(theta) - L(theta*)" if use_gap else "objective"
    for ax, xlabel in zip(axes, ["outer step", "inner steps (all workers and particles)", "training time (s)"]):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if use_gap or np.all([np.all(h["eval/objective"] > 0) for h in histories]):
            ax.set_yscale("log")
    axes[1].set_xscale("symlog", linthresh=1e3)
    axes[1].set_xlim(left=0)
    axes[0].set_title(f"{title}: {ylabel} (mean, min-max over seeds)")
    if show_theta:
        ax_theta = axes[3]
        if "theta_star" in reference:
            ax_theta.axhline(reference["theta_star"], color="k", ls="--", lw=1, label="theta* (horizon)")
        ax_theta.set_xlabel("outer step")
        ax_theta.set_ylabel("theta")
        ax_theta.set_yscale("symlog", linthresh=0.5)
    axes[-1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
