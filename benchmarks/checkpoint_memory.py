"""Memory and time of ``checkpointed_bptt`` against plain ``full_bptt``.

What is measured: a tanh RNN (hidden 64, input 8, fixed random inputs, readout loss)
over a horizon of 1000 steps; for ``full_bptt`` and for ``checkpointed_bptt`` at a
range of ``memory_budget`` values,

* memory: ``temp_size_in_bytes`` of the compiled ``estimate``
  (``jax.jit(...).lower(...).compile().memory_analysis()``, XLA's own accounting of
  the buffers it allocates besides arguments and outputs);
* time: median wall-clock seconds of the compiled ``estimate`` over interleaved repeats
  (each estimator timed in turn, round after round, in one run), as a ratio to
  ``full_bptt``'s;
* forward steps: ``unroll.checkpointing.plan(horizon, budget).forward_steps``.

Goal (Gruslys et al. 2016 report 95% of the memory saved at +33% time for horizon
1000): >= 95% of the memory saved at <= 1.25x the time. Prints a markdown table and
writes a PNG of memory saved against time ratio.

    python -m benchmarks.checkpoint_memory [--quick] [--out FILE.md] [--png FILE.png]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

import unroll
from benchmarks.report import report

HIDDEN, INPUT, HORIZON = 64, 8, 1000
GOAL_SAVED, GOAL_TIME = 0.95, 1.25


def rnn_system(hidden: int = HIDDEN, horizon: int = HORIZON) -> tuple[unroll.System, dict]:
    """``h' = tanh(W h + U x_t + b)``, loss ``0.5 (readout . h' - y_t)^2``."""
    keys = jax.random.split(jax.random.key(0), 6)
    inputs = jax.random.normal(keys[0], (horizon, INPUT))
    targets = jnp.sin(jnp.arange(horizon) / 10.0)

    def init(theta, key):
        return 0.1 * jax.random.normal(key, (hidden,))

    def step(theta, h, t):
        h = jnp.tanh(theta["W"] @ h + theta["U"] @ inputs[t] + theta["b"])
        return h, 0.5 * (theta["readout"] @ h - targets[t]) ** 2

    theta = {
        "W": 0.9 * jax.random.normal(keys[1], (hidden, hidden)) / jnp.sqrt(hidden),
        "U": jax.random.normal(keys[2], (hidden, INPUT)) / jnp.sqrt(INPUT),
        "b": jnp.zeros(hidden),
        "readout": jax.random.normal(keys[3], (hidden,)) / jnp.sqrt(hidden),
    }
    return unroll.System(init, step, horizon), theta


class Row(NamedTuple):
    name: str
    budget: int | None
    temp_bytes: int
    seconds: float
    forward_steps: int


def compiled(est, theta):
    state = jax.jit(est.init)(theta, jax.random.key(0))
    fn = jax.jit(est.estimate).lower(theta, state, jax.random.key(1)).compile()
    return fn, state


def measure(budgets: Sequence[int], repeats: int) -> list[Row]:
    system, theta = rnn_system()
    entries = [("full_bptt", None, unroll.full_bptt(system))]
    entries += [("checkpointed_bptt", b, unroll.checkpointed_bptt(system, memory_budget=b)) for b in budgets]
    runs = []
    for name, budget, est in entries:
        fn, state = compiled(est, theta)
        temp = fn.memory_analysis().temp_size_in_bytes
        jax.block_until_ready(fn(theta, state, jax.random.key(1)))  # warm-up
        runs.append((name, budget, fn, state, temp))
    times = {i: [] for i in range(len(runs))}
    for _ in range(repeats):  # interleaved: every estimator once per round
        for i, (_, _, fn, state, _) in enumerate(runs):
            start = time.perf_counter()
            jax.block_until_ready(fn(theta, state, jax.random.key(1)))
            times[i].append(time.perf_counter() - start)
    rows = []
    for i, (name, budget, _, _, temp) in enumerate(runs):
        steps = HORIZON if budget is None else unroll.checkpointing.plan(HORIZON, budget).forward_steps
        rows.append(Row(name, budget, temp, statistics.median(times[i]), steps))
    return rows


def table(rows: Sequence[Row]) -> str:
    base = rows[0]
    lines = [
        f"checkpointed_bptt vs full_bptt: tanh RNN hidden {HIDDEN}, horizon {HORIZON}; jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; goal >= {GOAL_SAVED:.0%} memory saved at <= {GOAL_TIME}x time",
        "",
        "| estimator | memory_budget | temp memory (KB) | memory saved | forward steps | time (ms) | time ratio | goal met? |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        saved = 1 - r.temp_bytes / base.temp_bytes
        ratio = r.seconds / base.seconds
        met = "" if r.budget is None else ("yes" if saved >= GOAL_SAVED and ratio <= GOAL_TIME else "no")
        lines.append(
            f"| {r.name} | {r.budget if r.budget is not None else '-'} | {r.temp_bytes / 1e3:,.1f} | {saved:.1%} "
            f"| {r.forward_steps:,} | {r.seconds * 1e3:.2f} | {ratio:.2f} | {met} |"
        )
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = rows[0]
    saved = [1 - r.temp_bytes / base.temp_bytes for r in rows[1:]]
    ratio = [r.seconds / base.seconds for r in rows[1:]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ratio, saved, "o-")
    for r, x, y in zip(rows[1:], ratio, saved):
        ax.annotate(f"m={r.budget}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(GOAL_SAVED, color="k", ls="--", lw=1)
    ax.axvline(GOAL_TIME, color="k", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("time / full_bptt time")
    ax.set_ylabel("memory saved vs full_bptt")
    ax.set_title(f"checkpointed_bptt, tanh RNN {HIDDEN}, horizon {HORIZON}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100, 300, 1000])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="budgets 10 and 100, 3 repeats")
    parser.add_argument("--out", help="also write the table (markdown) here")
    parser.add_argument("--png", help="write the memory-vs-time plot here")
    args = parser.parse_args(argv)
    budgets, repeats = ([10, 100], 3) if args.quick else (args.budgets, args.repeats)
    rows = measure(budgets, repeats)
    text = table(rows)
    report(text, args.out)
    if args.png:
        plot(rows, args.png)
    return rows


if __name__ == "__main__":
    main()
