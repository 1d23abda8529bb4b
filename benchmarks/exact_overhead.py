"""The exact estimators' overhead: ``full_bptt`` against ``jax.grad`` through one ``lax.scan``.

What is measured: the exact gradient of the mean per-step loss of one episode,
$\\nabla_\\theta \\frac{1}{T} \\sum_{t<T} \\ell_t$, on the contracting recurrent networks of
``benchmarks/parallel_time.py`` (``nonlinear_system``: an ``unroll.tasks.rnn`` GRU and tanh
cell of width 32 driven by ``u_t = sin(t f)``, float32) at ``T`` = 1e3, 1e4 and 1e5, by

* plain JAX, the floor: ``jax.grad`` of the mean of the losses of one ``lax.scan`` of
  ``system.step`` from ``system.init(theta, key)``, ``key`` the data key of the episode
  the estimators run;
* plain JAX with the loss, for reference: ``jax.value_and_grad`` of the same (an estimator
  returns the loss too, ``info["loss"]``: the forward pass then also keeps every step's loss);
* ``unroll.full_bptt(system)``: one ``estimate`` (it also returns the workers' new state
  and ``info``);
* the window machinery on its own: ``unroll.truncated_bptt(system, truncation=T)`` with one
  worker, whose windows are whole episodes, the same gradient.

Each is compiled ahead of time (``jax.jit(...).lower(...).compile()``, which also gives
its ``temp_size_in_bytes``) and run once; the estimators' gradients are checked against the
floor's (asserted equal to float32 tolerance, so all compute the same thing). Time: every
method timed in turn, in an order shuffled every round, round after round, in one run; a timed sample is
a block of calls of at least ``BLOCK_S`` seconds, divided by its calls, in wall-clock and
in this process's CPU time (``time.process_time``: the computations are sequential scans,
and CPU time leaves out the time the process waits for a core of the shared machine). The
table gives wall-clock medians; a ratio is the median over rounds of a method's time over
the floor's in the same round (the pair sees the same load), in CPU time and in wall-clock.
A second copy of the floor, ``jax.grad (A/A)``, timed like the others, shows the noise of
the ratios: its true ratio is 1.

Goal: ``full_bptt`` at most ``GOAL``x the floor's time at every T, in CPU time (no overhead
from the window machinery beyond timing noise); the same is reported for
``truncated_bptt``, and every ratio in wall-clock.

    python -m benchmarks.exact_overhead [--quick] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import unroll
from benchmarks.parallel_time import nonlinear_system
from benchmarks.report import report

CELLS = (("gru", 32), ("tanh", 32))  # (cell, width)
HORIZONS = (1_000, 10_000, 100_000)
GOAL = 1.05  # full_bptt / jax.grad time, at most
GRAD_TOLERANCE = 1e-4  # largest |g - g_plain| over a leaf's largest |g_plain| (float32)
BLOCK_S = 0.05  # a timed sample: calls repeated for at least this long
METHODS = ("jax.grad", "jax.grad (A/A)", "jax.value_and_grad", "full_bptt", "truncated_bptt")
ESTIMATORS = METHODS[3:]
CLOCKS = ("cpu", "wall")  # time.process_time, time.perf_counter


class Row(NamedTuple):
    cell: str
    width: int
    horizon: int
    rounds: int
    seconds: dict[str, float]  # median wall-clock seconds per gradient, by method
    ratios: dict[tuple[str, str], float]  # (clock, method): median over rounds of its time / jax.grad's
    over_value: dict[str, float]  # clock: the same for full_bptt / jax.value_and_grad (both return the loss)
    temp_bytes: dict[str, int]  # compiled temp memory, by method
    grad_error: dict[str, float]  # against jax.grad's gradient, by method

    def ratio(self, method: str, clock: str = "cpu") -> float:
        """``method``'s time over the floor's (the median of the rounds' ratios) on ``clock``."""
        return self.ratios[clock, method]


def plain_loss(system) -> Callable[[Any, jax.Array], jax.Array]:
    """The mean per-step loss of one ``lax.scan`` of the episode (``jax.grad`` of it is the floor)."""

    def loss(theta, key):
        step = lambda state, t: system.step(theta, state, t)
        _, losses = jax.lax.scan(step, system.init(theta, key), jnp.arange(system.horizon, dtype=jnp.int32))
        return jnp.mean(losses)

    return loss


def episode_key(state: unroll.WindowState) -> jax.Array:
    """The data key of the episode the next window of worker 0 starts: its key split in three,
    the second (the contract's ``Worker.key``, split as the engine splits it)."""
    return jax.random.split(state.workers.key[0, 0], 3)[1]


def methods(cell: str, width: int, horizon: int) -> dict[str, tuple[Callable, tuple]]:
    """Each method's function and arguments (from the same theta and key)."""
    system, theta = nonlinear_system(cell, width, horizon)
    key = jax.random.key(1)
    full = unroll.full_bptt(system)
    windows = unroll.truncated_bptt(system, truncation=horizon, num_workers=1)
    full_state, window_state = full.init(theta, key), windows.init(theta, key)
    plain = (theta, episode_key(full_state))
    return {
        "jax.grad": (jax.grad(plain_loss(system)), plain),
        "jax.grad (A/A)": (jax.grad(plain_loss(system)), plain),
        "jax.value_and_grad": (jax.value_and_grad(plain_loss(system)), plain),
        "full_bptt": (full.estimate, (theta, full_state, key)),
        "truncated_bptt": (windows.estimate, (theta, window_state, key)),
    }


def gradient_of(method: str, out: Any) -> Any:
    """The gradient in what ``method`` returns."""
    if method.startswith("jax.grad"):
        return out
    return out[1] if method == "jax.value_and_grad" else out.grad


def grad_error(grad, reference) -> float:
    leaves = zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(reference))
    return max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in leaves)


def calls_per_block(fn: Callable[[], Any]) -> int:
    """Calls of ``fn`` that take at least ``BLOCK_S`` seconds (from one timed call)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return max(1, round(BLOCK_S / max(time.perf_counter() - start, 1e-9)))


def interleaved_seconds(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each of ``fns`` on each clock (``CLOCKS``), one per round: each
    timed once per round (a block of calls), in an order shuffled every round (no method
    always follows the same one)."""
    blocks = {name: calls_per_block(fn) for name, fn in fns.items()}
    times = {name: {clock: [] for clock in CLOCKS} for name in fns}
    order, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(blocks[name]):
                jax.block_until_ready(fns[name]())
            times[name]["wall"].append((time.perf_counter() - wall) / blocks[name])
            times[name]["cpu"].append((time.process_time() - cpu) / blocks[name])
    return times


def paired_ratios(times: dict[str, dict[str, list[float]]], floor: str = "jax.grad") -> dict[tuple[str, str], float]:
    """``(clock, method)``: the median over rounds of the method's time over ``floor``'s."""
    return {
        (clock, name): statistics.median(a / b for a, b in zip(t[clock], times[floor][clock]))
        for name, t in times.items()
        for clock in CLOCKS
    }


def measure(cell: str, width: int, horizon: int, rounds: int) -> Row:
    """Compiles and checks the methods on one system, then times them interleaved."""
    thunks, temps, grads = {}, {}, {}
    for name, (fn, args) in methods(cell, width, horizon).items():
        compiled = jax.jit(fn).lower(*args).compile()
        temps[name] = compiled.memory_analysis().temp_size_in_bytes
        out = jax.block_until_ready(compiled(*args))
        grads[name] = gradient_of(name, out)
        thunks[name] = lambda compiled=compiled, args=args: compiled(*args)
    errors = {name: grad_error(grads[name], grads["jax.grad"]) for name in METHODS[1:]}
    for name, error in errors.items():
        assert error <= GRAD_TOLERANCE, (
            f"{name}'s gradient differs from jax.grad's by {error:.1e} ({cell}, T = {horizon})"
        )
    times = interleaved_seconds(thunks, rounds)
    seconds = {name: statistics.median(t["wall"]) for name, t in times.items()}
    over_value = paired_ratios(times, "jax.value_and_grad")
    over_value = {clock: over_value[clock, "full_bptt"] for clock in CLOCKS}
    row = Row(cell, width, horizon, rounds, seconds, paired_ratios(times), over_value, temps, errors)
    print(
        f"{cell} {width}, T = {horizon:,}: "
        + ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in row.seconds.items())
        + f"; full_bptt / jax.grad {row.ratio('full_bptt'):.3f} (CPU), {row.ratio('full_bptt', 'wall'):.3f} (wall)",
        flush=True,
    )
    return row


def table(rows: Sequence[Row]) -> str:
    both = lambda r, name: f"{r.ratio(name):.3f} ({r.ratio(name, 'wall'):.3f})"
    lines = [
        "| cell | T | jax.grad ms | jax.value_and_grad ms | full_bptt ms | truncated_bptt ms "
        "| **full_bptt / jax.grad**, CPU (wall) | truncated_bptt / jax.grad, CPU (wall) "
        "| value_and_grad / jax.grad, CPU (wall) | full_bptt / value_and_grad, CPU (wall) "
        "| A/A: jax.grad / jax.grad, CPU (wall) "
        "| temp memory full / jax.grad | gradient error (value_and_grad, full, truncated) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ms = [f"{1e3 * r.seconds[name]:.2f}" for name in ("jax.grad", "jax.value_and_grad", *ESTIMATORS)]
        memory = r.temp_bytes["full_bptt"] / max(r.temp_bytes["jax.grad"], 1)
        errors = ", ".join(f"{r.grad_error[name]:.0e}" for name in ("jax.value_and_grad", *ESTIMATORS))
        ratios = [both(r, name) for name in (*ESTIMATORS, "jax.value_and_grad", "jax.grad (A/A)")]
        ratios[0] = f"**{ratios[0]}**"
        ratios.insert(3, f"{r.over_value['cpu']:.3f} ({r.over_value['wall']:.3f})")
        lines.append(
            f"| {r.cell} {r.width} | {r.horizon:,} | {' | '.join(ms)} | {' | '.join(ratios)} | {memory:.2f} | {errors} |"
        )
    return "\n".join(lines + [""] + goal_lines(rows))


def goal_lines(rows: Sequence[Row]) -> list[str]:
    lines = []
    for name, clock in itertools.product(ESTIMATORS, CLOCKS):
        worst = max(rows, key=lambda r: r.ratio(name, clock))
        met = all(r.ratio(name, clock) <= GOAL for r in rows)
        each = ", ".join(f"{r.cell} T = {r.horizon:.0e}: {r.ratio(name, clock):.3f}".replace("e+0", "e") for r in rows)
        what = "Goal" if (name, clock) == ("full_bptt", "cpu") else "Reported"
        lines.append(
            f"* {what}: {name} <= {GOAL}x jax.grad's {'CPU' if clock == 'cpu' else 'wall-clock'} time at every T: "
            f"{'met' if met else 'NOT met'} (worst {worst.ratio(name, clock):.3f}, {worst.cell} at T = "
            f"{worst.horizon:,}; {each})."
        )
    worst = max(rows, key=lambda r: r.over_value["cpu"])
    lines.append(
        f"* Reported: full_bptt / jax.value_and_grad (both compute the loss), CPU time: worst "
        f"{worst.over_value['cpu']:.3f} ({worst.cell} at T = {worst.horizon:,}); "
        + ", ".join(f"{r.cell} T = {r.horizon:.0e}: {r.over_value['cpu']:.3f}".replace("e+0", "e") for r in rows)
        + "."
    )
    noise = max(abs(r.ratio("jax.grad (A/A)", clock) - 1) for r in rows for clock in CLOCKS)
    lines.append(f"* Noise: the A/A ratios (the floor against itself) stray up to {noise:.3f} from 1.")
    return lines


def header(rounds: int) -> str:
    device = jax.devices()[0]
    return (
        f"Exact overhead: full_bptt and truncated_bptt(truncation = T) against jax.grad through one lax.scan, "
        f"{rounds} interleaved rounds (wall-clock medians; ratios: medians of the rounds' ratios, CPU time and "
        f"wall-clock), blocks of >= {BLOCK_S} s\n"
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), {os.cpu_count()} CPU cores, "
        f"{platform.node() or 'unknown host'}, python {platform.python_version()}, "
        f"{datetime.date.today().isoformat()}"
    )


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    parser.add_argument("--rounds", type=int, default=31, help="interleaved rounds (default 31)")
    parser.add_argument("--quick", action="store_true", help="T = 1e3 and 1e4, 5 rounds")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.horizons, args.rounds = [1_000, 10_000], 5
    print(header(args.rounds), flush=True)
    rows = [
        measure(cell, width, horizon, args.rounds) for (cell, width), horizon in itertools.product(CELLS, args.horizons)
    ]
    report(table(rows), args.out, header(args.rounds))
    return rows


if __name__ == "__main__":
    main()
