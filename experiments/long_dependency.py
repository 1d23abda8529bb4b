"""Study 6: a dependency as long as the episode, learned in parallel over time.

Martin & Cundy (2018)'s synthetic classification (``unroll.tasks.long_dependency``):
the class is shown by the first inputs (1% of them) of a sequence of ``T`` steps, the rest
is noise,
and it is read out at the last step. Per horizon (1e3, 1e4, 1e5, and 1e6 with
``--horizons``), four learners get the same wall-clock budget of training seconds
(``unroll.train(time_limit=...)``; compiling and evaluating excluded):

* a GILR-LSTM and an LRU layer trained with ``parallel_bptt`` (the exact gradient through
  the associative scan);
* an LSTM trained with ``checkpointed_bptt`` (the same exact gradient, sequential, in
  ``MEMORY_BUDGET`` stored states) and with truncated BPTT (``TRUNCATION`` steps).

Expected: the parallel learners reach >= 99% accuracy at every horizon; the LSTM's exact
gradient takes far longer per step, and truncated BPTT cannot see a dependency longer
than its window, so it stays at chance.

    python experiments/long_dependency.py [--horizons 1000 10000 100000] [--budget-scale 1.0]
"""

from __future__ import annotations

import inspect
import json
import os
import time

import jax
import numpy as np
import optax
from common import publish, results_dir

import unroll
from unroll import registry

STUDY = "long-dependency"
LEARNERS = [  # (label, cell, estimator)
    ("GILR-LSTM, parallel_bptt", "gilr-lstm", "parallel-bptt"),
    ("LRU, parallel_bptt", "lru", "parallel-bptt"),
    ("LSTM, checkpointed_bptt", "lstm", "checkpointed-bptt"),
    ("LSTM, truncated BPTT", "lstm", "tbptt"),
]
BUDGET_S = {1_000: 30, 10_000: 90, 100_000: 480, 1_000_000: 900}  # training seconds per learner
HIDDEN, NUM_WORKERS, LEARNING_RATE = 16, 8, 3e-3
MEMORY_BUDGET, TRUNCATION = 10, 100
TARGET = 0.99
NUM_EVALS = 8  # evaluations per run, spread over its budget


def parse():
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies every time budget")
    parser.add_argument("--only", nargs="+", help="labels' cells to run (e.g. gilr-lstm lru)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--table-only", action="store_true", help="rebuild the table and plot from summary.json")
    return parser.parse_args()


def seconds_per_step(est, theta) -> float:
    """One compiled estimate's seconds (to spread the evaluations over the budget)."""
    state = jax.jit(est.init)(theta, jax.random.key(0))
    estimate = jax.jit(est.estimate)
    jax.block_until_ready(estimate(theta, state, jax.random.key(1)))
    start = time.perf_counter()
    jax.block_until_ready(estimate(theta, state, jax.random.key(2)))
    return time.perf_counter() - start


def run_one(horizon: int, cell: str, estimator: str, budget_s: float, progress: bool) -> dict:
    system, theta, evaluate = unroll.tasks.long_dependency(horizon, cell=cell, hidden=HIDDEN)
    settings = {"num_workers": NUM_WORKERS, "memory_budget": MEMORY_BUDGET, "truncation": min(TRUNCATION, horizon)}
    built = time.perf_counter()
    est = registry.build(estimator, system, **settings)
    build_s = time.perf_counter() - built  # (checkpointed_bptt plans its schedule here)
    step_s = seconds_per_step(est, theta)
    eval_every = max(1, int(budget_s / NUM_EVALS / step_s))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LEARNING_RATE))
    _, history = unroll.train(
        est,
        optimizer,
        theta,
        jax.random.key(1),
        num_steps=10**7,
        eval_fn=evaluate,
        eval_every=eval_every,
        time_limit=budget_s,
        progress=progress,
        name=f"{cell} {estimator} T={horizon:,}",
    )
    accuracy = np.asarray(history["eval/accuracy"])
    times = np.asarray(history["eval_time_s"])
    reached = np.nonzero(accuracy >= TARGET)[0]
    return {
        "horizon": horizon,
        "cell": cell,
        "estimator": estimator,
        "budget_s": budget_s,
        "outer_steps": int(len(history["loss"])),
        "seconds_per_step": float(history["train_time_s"]) / max(1, len(history["loss"])),
        "build_s": build_s,
        "compile_s": float(history["compile_s"]),
        "final_accuracy": float(accuracy[-1]),
        "best_accuracy": float(accuracy.max()),
        "final_objective": float(np.asarray(history["eval/objective"])[-1]),
        "time_to_target_s": float(times[reached[0]]) if len(reached) else None,
        "eval_time_s": times.tolist(),
        "eval_accuracy": accuracy.tolist(),
    }


def table(summary: dict) -> str:
    runs = summary["runs"]
    horizons = sorted({r["horizon"] for r in runs})
    lines = [
        f"Long-dependency classification (Martin & Cundy 2018): {summary['num_classes']} classes shown at the start, "
        f"read out at step T; hidden {HIDDEN}, {NUM_WORKERS} sequences per step, Adam {LEARNING_RATE:g} "
        f"(clipped at norm 1); the same training-time budget for every learner at a horizon. Accuracy on "
        f"{summary['num_eval_episodes']} held-out sequences at the end of the budget (time to {TARGET:.0%} in "
        "parentheses; - if not reached).",
        "",
        "| learner | "
        + " | ".join(f"T = {h:,} ({BUDGET_S.get(h, 0) * summary['budget_scale']:.0f} s)" for h in horizons)
        + " | seconds per step |",
        "|---|" + "---:|" * len(horizons) + "---|",
    ]
    for label, cell, estimator in LEARNERS:
        cells, speeds = [], []
        for h in horizons:
            run = next((r for r in runs if (r["cell"], r["estimator"], r["horizon"]) == (cell, estimator, h)), None)
            if run is None:
                cells.append("(not run)")
                continue
            reach = f"{run['time_to_target_s']:.0f} s" if run["time_to_target_s"] is not None else "-"
            cells.append(f"{run['final_accuracy']:.1%} ({reach}, {run['outer_steps']} steps)")
            speeds.append(f"{run['seconds_per_step']:.3g}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {' / '.join(speeds)} |")
    lines += [
        "",
        f"Chance is {1 / summary['num_classes']:.0%}. checkpointed_bptt keeps {MEMORY_BUDGET} states; truncated BPTT "
        f"windows are {TRUNCATION} steps. ![accuracy against training time](experiments/results/{STUDY}/curves.png)",
        "",
        f"Command: `{summary['command']}`, jax {summary['jax']} on {summary['device']}.",
    ]
    return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizons = sorted({r["horizon"] for r in summary["runs"]})
    fig, axes = plt.subplots(1, len(horizons), figsize=(4.2 * len(horizons), 3.6), squeeze=False)
    for ax, h in zip(axes[0], horizons):
        for label, cell, estimator in LEARNERS:
            run = next(
                (r for r in summary["runs"] if (r["cell"], r["estimator"], r["horizon"]) == (cell, estimator, h)), None
            )
            if run is not None:
                ax.plot(run["eval_time_s"], run["eval_accuracy"], "o-", ms=3, label=label)
        ax.axhline(TARGET, color="gray", ls="--", lw=1)
        ax.set(title=f"T = {h:,}", xlabel="training seconds", ylabel="held-out accuracy", ylim=(0, 1.02))
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse()
    out = results_dir(STUDY)
    path = os.path.join(out, "summary.json")
    if args.table_only:
        with open(path) as f:
            summary = json.load(f)
    else:
        command = "python experiments/long_dependency.py --horizons " + " ".join(map(str, args.horizons))
        if args.budget_scale != 1.0:
            command += f" --budget-scale {args.budget_scale:g}"
        device = jax.devices()[0]
        summary = {
            "command": command,
            "jax": jax.__version__,
            "device": f"{os.cpu_count()} CPU cores" if device.platform == "cpu" else device.device_kind,
            "budget_scale": args.budget_scale,
            "num_classes": _default("num_classes"),
            "num_eval_episodes": _default("num_eval_episodes"),
            "runs": [],
        }
        for horizon in args.horizons:
            for label, cell, estimator in LEARNERS:
                if args.only and cell not in args.only:
                    continue
                budget = BUDGET_S.get(horizon, 600) * args.budget_scale
                run = run_one(horizon, cell, estimator, budget, not args.no_progress)
                summary["runs"].append(run)
                print(
                    f"{label:28s} T={horizon:>9,}: accuracy {run['final_accuracy']:.1%}, "
                    f"{run['outer_steps']} steps, {run['seconds_per_step']:.3g} s/step",
                    flush=True,
                )
                with open(path, "w") as f:
                    json.dump(summary, f, indent=1)
    plot(summary, os.path.join(out, "curves.png"))
    publish(STUDY, table(summary))


def _default(name: str):
    """A default argument of the task (recorded with the results)."""
    return inspect.signature(unroll.tasks.long_dependency).parameters[name].default


if __name__ == "__main__":
    main()
