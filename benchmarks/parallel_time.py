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

Nonlinear recurrences (``--deer``): Newton's method over the whole episode,
``parallel_bptt(solver="deer")`` (dense step Jacobians in a matrix scan; Lim et al. 2024)
and ``solver="quasi-deer"`` (their diagonal in an elementwise scan; Gonzalez et al. 2024),
and their damped forms ``"elk"`` and ``"quasi-elk"`` (Levenberg-Marquardt steps by a parallel
Kalman smoother; Gonzalez et al. 2024), against sequential evaluation, on contracting systems driven by inputs computed from ``t``
(``u_t = sin(t f)``, 4 fixed frequencies; loss ``(r . h_t - sin(2 pi t / 25))^2 / 2``;
float32, one worker, default tolerance, ``max_iterations = min(T, 100)``): a tanh RNN
``h' = tanh(W h + U u_t + b)`` of width 8 and 32 and a GRU (``unroll.tasks.rnn``'s cell) of
width 8, every recurrent matrix scaled to spectral radius 0.9, at ``T`` = 1e3, 1e4 and
1e5; for each,

* forward: the episode sequentially (``unroll.episode_loss``) and by each solver
  (``unroll.parallel.solve_episode``), with its Newton iterations (and whether it
  converged);
* gradient: one ``estimate`` of ``full_bptt`` and of ``parallel_bptt(solver=...)`` (the
  same gradient; its relative difference is in the table), with ``info``'s
  ``iterations``, ``adjoint_iterations`` (quasi-DEER's adjoint is a Newton solve too) and
  the episodes recomputed sequentially (``fallback``, ``adjoint_fallback``);
* memory: ``temp_size_in_bytes`` of each compiled ``estimate``;
* time: medians of interleaved repeats of all of them in turn, in one run (a case whose round
  takes over 2 minutes gets one timed round, marked in the table); ratios are
  sequential / solver (speed-up; below 1 is slower) and solver / sequential (memory), and
  the cost of one Newton iteration is the solver's forward time / iterations, against
  one sequential forward: the forward speed-up is 1 / (iterations x that cost).

    python -m benchmarks.parallel_time [--quick] [--out FILE.md] [--png FILE.png]  # both parts
    python -m benchmarks.parallel_time --deer [--quick] [--out FILE.md] [--png FILE.png]
    python -m benchmarks.parallel_time --linear ...  # the linear layers only
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def _timed_rounds(fns: Sequence[Callable], budget_s: float, max_repeats: int, min_repeats: int = 1) -> list[list]:
    """Seconds of each function, timed in turn, round after round, until ``budget_s`` is
    spent (at least ``min_repeats`` rounds, at most ``max_repeats``)."""
    times = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < max_repeats and (len(times[0]) < min_repeats or time.perf_counter() - start < budget_s):
        for fn, record in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            record.append(time.perf_counter() - t0)
    return times


def _interleaved(fns: Sequence[Callable], budget_s: float, max_repeats: int, min_repeats: int = 1) -> list[float]:
    """Median seconds of each function over ``_timed_rounds``."""
    return [statistics.median(t) for t in _timed_rounds(fns, budget_s, max_repeats, min_repeats)]


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


# --------------------------------------------------------------------------- nonlinear: DEER and quasi-DEER

DEER_HORIZONS = (1_000, 10_000, 100_000)
DEER_SYSTEMS = (("tanh", 8), ("tanh", 32), ("gru", 8))  # (cell, width)
SOLVERS = unroll.parallel.SOLVERS  # deer, quasi-deer, elk, quasi-elk
SPECTRAL_RADIUS = 0.9
DEER_CASE = ("tanh", 8, 100_000, "quasi-deer")  # the CPU figure reported and explained
LONG_ROUND_S = 120.0  # a case whose round takes longer gets one timed round
FREQUENCIES = (0.05, 0.11, 0.23, 0.41)


def _spectral(key, matrix: jax.Array, radius: float) -> jax.Array:
    """``matrix`` redrawn from ``key`` (normal) and scaled to spectral radius ``radius``."""
    w = np.asarray(jax.random.normal(key, matrix.shape, jnp.float32))
    return jnp.asarray(w * (radius / np.max(np.abs(np.linalg.eigvals(w)))), jnp.float32)


def nonlinear_system(cell: str, width: int, horizon: int) -> tuple[unroll.System, dict]:
    """A contracting recurrent network driven by ``u_t = sin(t f)`` (``FREQUENCIES``): the
    ``unroll.tasks.rnn`` cell ``cell`` ("tanh" or "gru") of width ``width`` from zeros,
    its recurrent matrices at spectral radius ``SPECTRAL_RADIUS``, loss
    ``(r . h_t - sin(2 pi t / 25))^2 / 2``; float32; the step's Jacobian declared (the
    cell's ``StepJacobian``). Returns ``(system, theta)``."""
    dtype = jnp.float32
    frequencies = jnp.asarray(FREQUENCIES, dtype)
    layer = unroll.tasks.rnn.get_cell(cell)
    keys = jax.random.split(jax.random.key(0), 3)
    params = layer.init(keys[0], len(FREQUENCIES), width, dtype)
    recurrent = sorted(name for name in params if name.startswith("W"))  # W (tanh); Wz, Wr, Wh (GRU)
    for name, k in zip(recurrent, jax.random.split(keys[1], len(recurrent))):
        params[name] = _spectral(k, params[name], SPECTRAL_RADIUS)
    theta = {"cell": params, "readout": jax.random.normal(keys[2], (width,), dtype) / np.sqrt(width)}

    def init(theta, key):
        return layer.initial(theta["cell"], width, dtype)

    def step(theta, h, t):
        time_ = t.astype(dtype)
        h = layer.apply(theta["cell"], h, jnp.sin(time_ * frequencies))
        return h, 0.5 * (theta["readout"] @ layer.features(h) - jnp.sin(2 * np.pi * time_ / 25)) ** 2

    def jacobian(theta, h, t):  # the cell's structured Jacobian: DEER and quasi-DEER linearize with it
        return layer.jacobian(theta["cell"], h, jnp.sin(t.astype(dtype) * frequencies))

    return unroll.System(init, step, horizon, jacobian=jacobian), theta


class DeerRow(NamedTuple):
    cell: str
    width: int
    horizon: int
    solver: str
    rounds: int  # timed rounds the medians are over
    forward_sequential: float  # seconds
    forward_solver: float
    forward_iterations: int  # Newton iterations of solve_episode
    forward_converged: bool
    gradient_sequential: float
    gradient_solver: float
    gradient_iterations: int  # info["iterations"] of the estimate
    adjoint_iterations: int | None  # quasi-DEER's adjoint solve
    fallback: int  # episodes recomputed sequentially: forward + adjoint
    memory_sequential: int  # compiled temp bytes of the estimate
    memory_solver: int
    gradient_error: float  # max |g_solver - g_full_bptt| / max |g_full_bptt|

    @property
    def forward_speedup(self) -> float:
        return self.forward_sequential / self.forward_solver

    @property
    def gradient_speedup(self) -> float:
        return self.gradient_sequential / self.gradient_solver

    @property
    def memory_ratio(self) -> float:
        return self.memory_solver / self.memory_sequential

    @property
    def seconds_per_iteration(self) -> float:
        return self.forward_solver / self.forward_iterations

    @property
    def iteration_cost(self) -> float:
        """One Newton iteration's time in sequential forwards."""
        return self.seconds_per_iteration / self.forward_sequential


def _relative_error(tree, reference) -> float:
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(reference)))
    return diff / max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(reference))


def measure_deer_case(
    cell: str, width: int, horizon: int, budget_s: float, max_repeats: int, solvers: Sequence[str] = SOLVERS
) -> list[DeerRow]:
    """Each solver against sequential evaluation on one system: the sequential forward, each
    solver's, ``full_bptt``'s estimate and each solver's, timed in turn (six with the two
    ``SOLVERS``; ``solvers`` may name any of ``unroll.parallel.SOLVERS``)."""
    system, theta = nonlinear_system(cell, width, horizon)
    key = jax.random.key(0)
    cap = min(horizon, 100)  # parallel_bptt's default max_iterations

    def solved(th, k, solver):
        sol = unroll.parallel.solve_episode(system, th, k, solver=solver, max_iterations=cap)
        return jnp.mean(sol.losses), sol.iterations, sol.converged

    forwards = [_compiled(lambda th, k: unroll.episode_loss(system, th, k), theta, key)[0]]
    forwards += [_compiled(lambda th, k, s=s: solved(th, k, s), theta, key)[0] for s in solvers]
    estimates = []
    for est in [unroll.full_bptt(system)] + [unroll.parallel_bptt(system, solver=s) for s in solvers]:
        estimates.append(_compiled(est.estimate, theta, jax.jit(est.init)(theta, key), key))
    fns = forwards + [fn for fn, _ in estimates]
    start = time.perf_counter()
    outputs = [fn() for fn in fns]  # warm up; the iterations and gradients are read from here
    long = time.perf_counter() - start > LONG_ROUND_S
    times = _timed_rounds(fns, budget_s, max_repeats, min_repeats=1 if long else 3)
    seconds = [statistics.median(t) for t in times]
    (grad_sequential, _, _), memory_sequential = outputs[1 + len(solvers)], estimates[0][1]
    rows = []
    for i, solver in enumerate(solvers):
        _, iterations, converged = outputs[1 + i]
        grad, _, info = outputs[2 + len(solvers) + i]
        adjoint = info.get("adjoint_iterations")
        rows.append(
            DeerRow(
                cell,
                width,
                horizon,
                solver,
                len(times[0]),
                seconds[0],
                seconds[1 + i],
                int(iterations),
                bool(converged),
                seconds[1 + len(solvers)],
                seconds[2 + len(solvers) + i],
                int(info["iterations"]),
                None if adjoint is None else int(adjoint),
                int(info["fallback"]) + int(info.get("adjoint_fallback", 0)),
                memory_sequential,
                estimates[1 + i][1],
                _relative_error(grad, grad_sequential),
            )  # fmt: skip
        )
    return rows


def deer_table(rows: Sequence[DeerRow]) -> str:
    lines = [
        "| cell | n | T | solver | iterations fwd, grad, adjoint | fallback | forward seq s | forward solver s "
        "| forward speed-up | s / iteration | iteration / seq forward | gradient seq s | gradient solver s "
        "| gradient speed-up | memory seq | memory solver | memory solver / seq | gradient rel. diff | rounds |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        forward = f"{r.forward_iterations}" + ("" if r.forward_converged else " (not converged)")
        adjoint = "-" if r.adjoint_iterations is None else f"{r.adjoint_iterations}"
        rounds = f"{r.rounds}" + (" (one: long)" if r.rounds == 1 else "")
        lines.append(
            f"| {r.cell} | {r.width} | {r.horizon:,} | {r.solver} | {forward}, {r.gradient_iterations}, {adjoint} "
            f"| {r.fallback} | {r.forward_sequential:.3g} | {r.forward_solver:.3g} | {r.forward_speedup:.2f}x "
            f"| {r.seconds_per_iteration:.3g} | {r.iteration_cost:.3f} | {r.gradient_sequential:.3g} "
            f"| {r.gradient_solver:.3g} | {r.gradient_speedup:.2f}x | {mib(r.memory_sequential)} "
            f"| {mib(r.memory_solver)} | {r.memory_ratio:.2f} | {r.gradient_error:.1e} | {rounds} |"
        )
    return "\n".join(lines)


def deer_line(rows: Sequence[DeerRow]) -> str:
    """The reported case, explained as cost per iteration x iterations."""
    match = [r for r in rows if (r.cell, r.width, r.horizon, r.solver) == DEER_CASE]
    if not match:
        return f"reported case {DEER_CASE} not measured in this run"
    r = match[0]
    adjoint = "" if r.adjoint_iterations is None else f" + {r.adjoint_iterations} adjoint"
    return (
        f"{r.solver} against sequential, {r.cell} RNN n = {r.width}, T = {r.horizon:,}: forward "
        f"{r.forward_speedup:.2f}x = sequential {r.forward_sequential:.3g} s / ({r.forward_iterations} iterations x "
        f"{r.seconds_per_iteration:.3g} s); one iteration costs {r.iteration_cost:.3f} sequential forwards, so the "
        f"speed-up is 1 / ({r.forward_iterations} x {r.iteration_cost:.3f}). Gradient {r.gradient_speedup:.2f}x "
        f"(full_bptt {r.gradient_sequential:.3g} s, {r.solver} {r.gradient_solver:.3g} s: "
        f"{r.gradient_iterations} forward{adjoint} iterations), memory {r.memory_ratio:.2f} of full_bptt's "
        f"({mib(r.memory_solver)} vs {mib(r.memory_sequential)}); fallback: {r.fallback} episode(s)"
    )


def _plot_linear(axes, rows: Sequence[Row]) -> None:
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
    axes[0].set_title("linear layers: gradient speed-up")
    axes[1].set_title("linear layers: gradient memory")


def _plot_deer(axes, rows: Sequence[DeerRow]) -> None:
    colors = {system: f"C{i}" for i, system in enumerate(DEER_SYSTEMS)}
    markers = {"deer": "o", "quasi-deer": "s", "elk": "^", "quasi-elk": "v"}
    for system in DEER_SYSTEMS:
        for solver in SOLVERS:
            sel = sorted(
                (r for r in rows if (r.cell, r.width) == system and r.solver == solver), key=lambda r: r.horizon
            )
            if not sel:
                continue
            horizons, style = [r.horizon for r in sel], dict(color=colors[system], marker=markers[solver])
            name = f"{system[0]} {system[1]}, {solver}"
            axes[0].plot(horizons, [r.gradient_speedup for r in sel], "-", label=f"{name}", **style)
            axes[0].plot(horizons, [r.forward_speedup for r in sel], ":", **style)
            axes[1].plot(horizons, [r.forward_iterations for r in sel], "-", label=name, **style)
            if solver == "quasi-deer":
                axes[1].plot(horizons, [r.adjoint_iterations for r in sel], ":", **style)
    axes[0].axhline(1.0, color="gray", ls="--", lw=1)
    axes[0].set(xscale="log", yscale="log", xlabel="horizon T", ylabel="sequential time / solver time")
    axes[0].set_title("DEER, quasi-DEER: speed-up (gradient solid, forward dotted)", fontsize=9)
    axes[1].set(xscale="log", xlabel="horizon T", ylabel="Newton iterations")
    axes[1].set_title("Newton iterations (forward solid, quasi-DEER adjoint dotted)", fontsize=9)
    axes[0].legend(fontsize=7)


def plot(rows: Sequence[Row], deer_rows: Sequence[DeerRow], path: str) -> None:
    """One row of two panels per part that ran: linear layers, then DEER and quasi-DEER."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [(fn, part) for fn, part in ((_plot_linear, rows), (_plot_deer, deer_rows)) if part]
    fig, axes = plt.subplots(len(parts), 2, figsize=(10, 4 * len(parts)), squeeze=False)
    for (fn, part), row in zip(parts, axes):
        fn(row, part)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def machine_line() -> str:
    device = jax.devices()[0]
    return (
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), {jax.local_device_count()} device(s), "
        f"{os.cpu_count()} CPU cores"
    )


def main(argv: Sequence[str] | None = None) -> list[Row | DeerRow]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="linear: T = 1e3 and 1e4, width 32 only; DEER: T = 1e3 only"
    )
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--linear", action="store_true", help="only the linear layers (parallel form)")
    part.add_argument("--deer", action="store_true", help="only the nonlinear systems (DEER and quasi-DEER)")
    parser.add_argument("--max-horizon", type=int, default=HORIZONS[-1])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per case (at least 1 round)")
    parser.add_argument("--note", default="", help="a line about the machine, added to the header")
    parser.add_argument("--out")
    parser.add_argument("--png")
    args = parser.parse_args(argv)
    linear, nonlinear = not args.deer, not args.linear
    headers = []
    if linear:
        headers.append(
            f"parallel_bptt vs full_bptt, long-dependency task, one layer; {machine_line()}\n"
            "seq = sequential (lax.scan of step), par = parallel (system.episode, associative scan); "
            "medians of interleaved repeats; speed-up = seq / par; memory = compiled temp bytes of the gradient"
        )
    if nonlinear:
        headers.append(
            f"parallel_bptt(solver='deer' | 'quasi-deer' | 'elk' | 'quasi-elk') vs sequential (episode_loss, full_bptt), contracting "
            f"tanh RNN and GRU (recurrent spectral radius {SPECTRAL_RADIUS:g}), float32, one worker; "
            f"{machine_line()}\n"
            "forward = episode_loss vs unroll.parallel.solve_episode, gradient = one estimate; medians of "
            "interleaved repeats of all of them in one run; speed-up = seq / solver (< 1: slower); s / iteration = "
            "solver forward / its iterations, in sequential forwards in the next column; memory = compiled temp "
            "bytes of the estimate; fallback = episodes recomputed sequentially (forward + adjoint)"
        )
    header = "\n".join(headers) + (f"\n{args.note}" if args.note else "")
    print(header, flush=True)
    rows, deer_rows, texts = [], [], []
    if linear:
        horizons = [t for t in (HORIZONS[:2] if args.quick else HORIZONS) if t <= args.max_horizon]
        widths = WIDTHS[:1] if args.quick else WIDTHS
        for horizon in horizons:
            for cell in CELLS:
                for width in widths:
                    rows.append(measure_case(cell, width, horizon, args.budget, max_repeats=7))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
        texts.append(table(rows) + "\n\n" + goal_line(rows))
    if nonlinear:
        horizons = [t for t in (DEER_HORIZONS[:1] if args.quick else DEER_HORIZONS) if t <= args.max_horizon]
        for horizon in horizons:
            for cell, width in DEER_SYSTEMS:
                start = time.perf_counter()
                deer_rows += measure_deer_case(cell, width, horizon, args.budget, max_repeats=7)
                for line in deer_table(deer_rows[-len(SOLVERS) :]).splitlines()[2:]:
                    print(line, flush=True)
                print(f"  ({cell} {width}, T = {horizon:,}: {time.perf_counter() - start:.0f} s)", flush=True)
        texts.append(deer_table(deer_rows) + "\n\n" + deer_line(deer_rows))
    report("\n\n".join(texts), args.out, header)
    if args.png:
        plot(rows, deer_rows, args.png)
    return rows + deer_rows


if __name__ == "__main__":
    main()
