"""Parallel-in-time against sequential evaluation of linear recurrent layers.

What is measured: the long-dependency task (``unroll.tasks.long_dependency``) with one
GILR or LRU layer of width 32 and 128, at horizons ``T`` from 1e3 to 1e6; for each,

* forward: the episode's mean loss, sequentially (``unroll.episode_loss``, one
  ``lax.scan`` of ``step``) and in parallel (``system.episode``, an associative scan);
* gradient: one ``estimate`` of ``full_bptt`` (reverse mode through the scan of
  ``step``) and of ``parallel_bptt`` (reverse mode through ``system.episode``), the same
  exact gradient;
* memory: ``temp_size_in_bytes`` of each compiled gradient (XLA's own accounting);
* time: median wall-clock seconds over interleaved repeats, sequential and parallel in
  turn, in one run; the ratio is sequential / parallel (the speed-up).

Goal (issue 15): ``parallel_bptt`` at least 5x ``full_bptt``'s speed on an LRU layer of
width 32 at ``T = 1e5``, with no more compiled memory.

    python -m benchmarks.parallel_time [--quick] [--out FILE.md] [--png FILE.png]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

import unroll
from benchmarks.report import report

GOAL_SPEEDUP = 5.0
GOAL_CASE = ("lru", 32, 100_000)
HORIZONS = (1_000, 10_000, 100_000, 1_000_000)
WIDTHS = (32, 128)
CELLS = ("gilr", "lru")


class Row(NamedTuple):
    cell: str
    width: int
    horizon: int
    forward_sequential: float  # seconds
    forward_parallel: float
    gradient_sequential: float
    gradient_parallel: float
    memory_sequential: int  # compiled temp bytes of the gradient
    memory_parallel: int

    @property
    def forward_speedup(self) -> float:
        return self.forward_sequential / self.forward_parallel

    @property
    def gradient_speedup(self) -> float:
        return self.gradient_sequential / self.gradient_parallel


def _compiled(fn: Callable, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    return (lambda: jax.block_until_ready(compiled(*args))), compiled.memory_analysis().temp_size_in_bytes


def _interleaved(fns: Sequence[Callable], budget_s: float, max_repeats: int) -> list[float]:
    """Median seconds of each function, timed in turn, round after round, until
    ``budget_s`` is spent (at least one round, at most ``max_repeats``)."""
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < max_repeats and (not times[0] or time.perf_counter() - start < budget_s):
        for fn, record in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            record.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def measure_case(cell: str, width: int, horizon: int, budget_s: float, max_repeats: int) -> Row:
    system, theta, _ = unroll.tasks.long_dependency(horizon, cell=cell, hidden=width, num_eval_episodes=1)
    key = jax.random.key(0)
    forward_seq, _ = _compiled(lambda th, k: unroll.episode_loss(system, th, k), theta, key)
    forward_par, _ = _compiled(lambda th, k: jnp.mean(system.episode(th, k)), theta, key)
    gradients = []
    for est in (unroll.full_bptt(system), unroll.parallel_bptt(system)):
        state = jax.jit(est.init)(theta, key)
        gradients.append(_compiled(lambda th, s, k, est=est: est.estimate(th, s, k)[0], theta, state, key))
    fns = [forward_seq, forward_par, gradients[0][0], gradients[1][0]]
    for fn in fns:  # warm up
        fn()
    seconds = _interleaved(fns, budget_s, max_repeats)
    return Row(cell, width, horizon, *seconds, gradients[0][1], gradients[1][1])


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def table(rows: Sequence[Row]) -> str:
    lines = [
        "| cell | width | T | forward seq s | forward par s | forward speed-up | gradient seq s | gradient par s "
        "| gradient speed-up | memory seq | memory par | memory par / seq |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.cell} | {r.width} | {r.horizon:,} | {r.forward_sequential:.4f} | {r.forward_parallel:.4f} "
            f"| {r.forward_speedup:.1f}x | {r.gradient_sequential:.4f} | {r.gradient_parallel:.4f} "
            f"| {r.gradient_speedup:.1f}x | {mib(r.memory_sequential)} | {mib(r.memory_parallel)} "
            f"| {r.memory_parallel / r.memory_sequential:.2f} |"
        )
    return "\n".join(lines)


def goal_line(rows: Sequence[Row]) -> str:
    match = [r for r in rows if (r.cell, r.width, r.horizon) == GOAL_CASE]
    if not match:
        return f"goal case {GOAL_CASE} not measured in this run"
    r = match[0]
    met = r.gradient_speedup >= GOAL_SPEEDUP and r.memory_parallel <= r.memory_sequential
    return (
        f"goal: parallel_bptt >= {GOAL_SPEEDUP:g}x full_bptt on {r.cell} width {r.width} at T = {r.horizon:,}, "
        f"memory no more: measured {r.gradient_speedup:.1f}x, memory {mib(r.memory_parallel)} vs "
        f"{mib(r.memory_sequential)}: {'met' if met else 'NOT met'}"
    )


def plot(rows: Sequence[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for cell in CELLS:
        for width in WIDTHS:
            sel = sorted((r for r in rows if r.cell == cell and r.width == width), key=lambda r: r.horizon)
            if not sel:
                continue
            horizons = [r.horizon for r in sel]
            axes[0].plot(horizons, [r.gradient_speedup for r in sel], "o-", label=f"{cell} {width}")
            axes[1].plot(
                horizons, [r.memory_parallel / r.memory_sequential for r in sel], "o-", label=f"{cell} {width}"
            )
    axes[0].axhline(GOAL_SPEEDUP, color="gray", ls="--", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel="horizon T", ylabel="full_bptt time / parallel_bptt time")
    axes[1].axhline(1.0, color="gray", ls="--", lw=1)
    axes[1].set(xscale="log", xlabel="horizon T", ylabel="compiled memory, parallel / sequential")
    axes[0].legend()
    axes[0].set_title("gradient speed-up")
    axes[1].set_title("gradient memory")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T = 1e3 and 1e4, width 32 only")
    parser.add_argument("--max-horizon", type=int, default=HORIZONS[-1])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case (at least 1 round)")
    parser.add_argument("--out")
    parser.add_argument("--png")
    args = parser.parse_args(argv)
    horizons = [t for t in (HORIZONS[:2] if args.quick else HORIZONS) if t <= args.max_horizon]
    widths = WIDTHS[:1] if args.quick else WIDTHS
    header = (
        f"parallel_bptt vs full_bptt, long-dependency task, one layer; jax {jax.__version__}, "
        f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind}), {jax.local_device_count()} device(s)\n"
        "seq = sequential (lax.scan of step), par = parallel (system.episode, associative scan); "
        "medians of interleaved repeats; speed-up = seq / par; memory = compiled temp bytes of the gradient"
    )
    print(header, flush=True)
    rows = []
    for horizon in horizons:
        for cell in CELLS:
            for width in widths:
                rows.append(measure_case(cell, width, horizon, args.budget, max_repeats=7))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows) + "\n\n" + goal_line(rows)
    report(text, args.out, header)
    if args.png:
        plot(rows, args.png)
    return rows


if __name__ == "__main__":
    main()
