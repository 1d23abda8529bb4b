"""Memory and time of ``checkpointed_bptt`` against ``full_bptt`` and two checkpointing peers.

What is measured: a tanh RNN (hidden 64, input 8, fixed random inputs, readout loss) at
horizons T = 1e3, 1e4 and 1e5; at each, the exact gradient of the mean per-step loss, from
the same theta and the same initial state, by

* ``full_bptt(system)``, the reference (every step's activations kept);
* ``checkpointed_bptt(system, memory_budget=m)`` for m in ``--checkpoints`` (10, 100),
  at T = 1e3 also for the sweep ``--budgets`` (2 .. 1000), and at T = 1e4 and 1e5 also
  at m = 2 ceil(sqrt(T)) (200, 634), the states the nested scans below keep at least
  (their ceil(T / k) block starts plus a block's k steps of activations, each at least a
  state), for the comparison at no more than their memory;
* equinox's checkpointed scan at the same m: ``equinox.internal.scan(f, h0,
  jnp.arange(T), length=T, kind="checkpointed", checkpoints=m)`` (online treeverse,
  Stumm and Walther 2010), differentiated by ``jax.grad``. Both count the initial state
  as one of the m stored states (equinox saves it as a checkpoint and also holds it as
  the argument);
* two levels of ``jax.checkpoint``-nested scans: an outer ``lax.scan`` over blocks of
  k = round(sqrt(T)) steps, each block a ``jax.checkpoint``-wrapped inner ``lax.scan``
  (``prevent_cse=False``, as JAX advises under a scan; a last, shorter block when k does
  not divide T), by ``jax.grad``: the outer scan keeps the ceil(T / k) block start
  states and each block's activations are rebuilt for its backward pass.

For each:

* memory: ``temp_size_in_bytes`` of the compiled gradient
  (``jax.jit(...).lower(...).compile().memory_analysis()``, XLA's own accounting of the
  buffers it allocates besides arguments and outputs);
* time: median wall-clock time per gradient over interleaved repeats (at each T every
  method is timed in turn, round after round, in one run; 15 rounds, a third of them at
  T >= 1e5: on a shared machine the load moves ``full_bptt``'s time, which is bound by
  memory traffic, more than the others'), as ratios to ``full_bptt``'s and to equinox's
  at the same m;
* forward steps: step evaluations per gradient, each step's evaluation for its own
  backward pass counted, so ``full_bptt`` is T. Ours: ``unroll.checkpointing.plan(T,
  m).forward_steps``. Equinox and the nested scans: counted in a separate, untimed run
  by a ``jax.debug.callback`` in the step function, which fires at every evaluation (the
  forward pass, each recomputation from a checkpoint and the evaluation inside each
  step's ``jax.vjp`` in the backward pass). That raw count is already in our convention:
  a step's backward pass evaluates it once (``lax.scan`` under ``jax.grad`` counts T;
  equinox with ``checkpoints=T`` counts 2T against our 2T - 1, the one more being the
  last step of the forward pass, which our schedule leaves to its backward pass). The
  nested scans count 2T: every step once in the forward pass, and once more when its
  block is rebuilt for the backward pass. (``--count-up-to`` skips the counting above a
  horizon: the counting run makes one host callback per evaluation; ``--quick`` counts at
  T = 1e3 only.)

Every method's gradient is checked against ``full_bptt``'s (asserted equal to float32
tolerance at T = 1e3, where it is cheap; the largest deviation is reported at every T).

Goals: at T = 1e3, >= 95% of ``full_bptt``'s memory saved at <= 1.25x its time for some
budget (Gruslys et al. 2016 report 95% saved at +33% time for horizon 1000); at equal
checkpoints, ``checkpointed_bptt`` at most equinox's time at T = 1e4 and 1e5; at T = 1e4
and 1e5, ``checkpointed_bptt`` at most the nested scans' time at no more than their memory
(temp bytes) for some budget, and at most 1.10x ``full_bptt``'s time at m = 100. Prints a
markdown table (its header names the date, the machine and its load) and writes a PNG of
memory against time per gradient, one panel per T.

    python -m benchmarks.checkpoint_memory [--quick] [--out FILE.md] [--png FILE.png]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import unroll
from benchmarks.report import report

HIDDEN, INPUT = 64, 8
HORIZON = 1000  # the sweep's horizon and that of the first goal
HORIZONS = (1000, 10_000, 100_000)
CHECKPOINTS = (10, 100)
BUDGETS = (2, 5, 10, 20, 50, 100, 300, 1000)
GOAL_SAVED, GOAL_TIME = 0.95, 1.25
GOAL_HORIZONS = (10_000, 100_000)  # checkpointed_bptt / equinox <= 1 at equal checkpoints; the nested goals
GOAL_FULL_BUDGET, GOAL_FULL_TIME = 100, 1.10  # checkpointed_bptt at m = 100 <= 1.10x full_bptt's time
GRAD_TOLERANCE = 1e-4  # largest |g - g_full| over a leaf's largest |g_full|, asserted at HORIZON
LABELS = {
    "full_bptt": "full_bptt",
    "checkpointed_bptt": "checkpointed_bptt",
    "equinox": "equinox scan (checkpointed)",
    "nested": "jax.checkpoint nested scans",
}


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
    """One method at one horizon. ``budget``: ``memory_budget`` (ours), ``checkpoints``
    (equinox), the block length k (nested scans), None (``full_bptt``)."""

    horizon: int
    name: str
    budget: int | None
    temp_bytes: int
    seconds: float
    forward_steps: int | None  # None: not counted (a peer above --count-up-to)
    grad_error: float  # largest |g - g_full| over a leaf's largest |g_full|


class Method(NamedTuple):
    name: str
    budget: int | None
    gradient: Callable  # gradient(*args) -> the gradient pytree (jit-able)
    args: tuple
    forward_steps: Callable[[], int | None]  # untimed


def equinox_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("equinox")
    except PackageNotFoundError:
        return None


# ----------------------------------------------------------------------------- the peers


def equinox_loss(step, horizon: int, checkpoints: int):
    """The mean per-step loss by ``equinox.internal.scan(kind="checkpointed")``."""
    import equinox.internal as eqxi

    def loss(theta, h0):
        f = lambda h, t: step(theta, h, t)
        _, losses = eqxi.scan(f, h0, jnp.arange(horizon), length=horizon, kind="checkpointed", checkpoints=checkpoints)
        return losses.mean()

    return loss


def nested_loss(step, horizon: int, block: int):
    """The mean per-step loss by an outer ``lax.scan`` over ``jax.checkpoint``-ed blocks of
    ``block`` steps (a shorter last block for the remainder)."""

    def block_scan(theta, h, ts):
        return jax.lax.scan(lambda h, t: step(theta, h, t), h, ts)

    # prevent_cse guards against XLA merging the recomputation into the forward pass,
    # which cannot happen across the iterations of a scan (JAX's advice under a scan)
    run_block = jax.checkpoint(block_scan, prevent_cse=False)
    whole = horizon // block

    def loss(theta, h0):
        h, losses = jax.lax.scan(
            lambda h, ts: run_block(theta, h, ts), h0, jnp.arange(whole * block).reshape(whole, -1)
        )
        total = losses.sum()
        if whole * block < horizon:
            _, rest = run_block(theta, h, jnp.arange(whole * block, horizon))
            total = total + rest.sum()
        return total / horizon

    return loss


def counted_steps(make_loss, step, theta, h0) -> int:
    """Step evaluations of one ``jax.grad`` of ``make_loss(counting step)``, counted by a
    callback in the step (it fires at every evaluation, recomputations included)."""
    count = [0]

    def tick(t):
        count[0] += 1

    def counting(theta, h, t):
        jax.debug.callback(tick, t)  # an operand, so the callback is not hoisted out of a loop
        return step(theta, h, t)

    jax.block_until_ready(jax.jit(jax.grad(make_loss(counting)))(theta, h0))
    jax.effects_barrier()
    return count[0]


# ----------------------------------------------------------------------------- measuring


def nested_matched(horizon: int) -> int:
    """``2 ceil(sqrt(T))``: no more states than the nested scans keep (``ceil(T / k)`` block
    starts, ``k = round(sqrt(T))`` steps of activations, each at least a state)."""
    return 2 * math.ceil(math.sqrt(horizon))


def methods(horizon: int, budgets: Sequence[int], checkpoints: Sequence[int], count: bool) -> list[Method]:
    """Every method at ``horizon`` (``full_bptt`` first) with its arguments; the peers'
    forward steps are counted if ``count``. At the goal horizons ours also runs at
    ``nested_matched(T)``."""
    system, theta = rnn_system(horizon=horizon)
    key = jax.random.key(1)

    def ours(est, name, budget, steps):
        state = jax.jit(est.init)(theta, jax.random.key(0))
        return Method(name, budget, lambda th, s, k: est.estimate(th, s, k).grad, (theta, state, key), steps)

    full = ours(unroll.full_bptt(system), "full_bptt", None, lambda: horizon)
    h0 = full.args[1].workers.state[0, 0]  # the same worker state (key 0, no stagger) for every method
    found = [full]
    matched = {nested_matched(horizon)} if horizon in GOAL_HORIZONS else set()
    for m in sorted(set(budgets) | set(checkpoints) | matched):
        est = unroll.checkpointed_bptt(system, memory_budget=m)
        steps = lambda m=m: unroll.checkpointing.plan(horizon, m).forward_steps
        found.append(ours(est, "checkpointed_bptt", m, steps))
    peers = [("equinox", m, lambda step, m=m: equinox_loss(step, horizon, m)) for m in checkpoints]
    peers = peers if equinox_version() else []
    k = round(math.sqrt(horizon))
    peers.append(("nested", k, lambda step: nested_loss(step, horizon, k)))
    for name, budget, make in peers:
        steps = lambda make=make: counted_steps(make, system.step, theta, h0) if count else None
        found.append(Method(name, budget, jax.grad(make(system.step)), (theta, h0), steps))
    return found


def grad_error(grad, reference) -> float:
    leaves = zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(reference))
    return max(float(jnp.max(jnp.abs(g - r)) / jnp.max(jnp.abs(r))) for g, r in leaves)


def interleaved_times(fns: Sequence[Callable[[], Any]], repeats: int) -> list[float]:
    """Median seconds of each of ``fns``, every one timed once per round."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def progress(horizon: int, what: str, found: Sequence[Method], seconds: Sequence[float]) -> None:
    each = ", ".join(f"{m.name} {m.budget or ''} {s:.1f}".replace("  ", " ") for m, s in zip(found, seconds))
    print(f"T = {horizon:,}: {what} (s): {each}", flush=True)


def compile_all(horizon: int, found: Sequence[Method]) -> tuple[list[Callable[[], Any]], list[int], list[Any]]:
    """Each method compiled (a thunk), its temp memory and its gradient from a first run (the warm-up)."""
    compiled, temps, grads, seconds = [], [], [], []
    for method in found:
        start = time.perf_counter()
        fn = jax.jit(method.gradient).lower(*method.args).compile()
        temps.append(fn.memory_analysis().temp_size_in_bytes)
        grads.append(jax.block_until_ready(fn(*method.args)))
        compiled.append(lambda fn=fn, args=method.args: fn(*args))
        seconds.append(time.perf_counter() - start)
    progress(horizon, "compiled and ran once", found, seconds)
    return compiled, temps, grads


def measure_horizon(
    horizon: int, budgets: Sequence[int], checkpoints: Sequence[int], repeats: int, count: bool
) -> list[Row]:
    found = methods(horizon, budgets, checkpoints, count)
    compiled, temps, grads = compile_all(horizon, found)
    errors = [grad_error(g, grads[0]) for g in grads]
    bad = [(m.name, m.budget, f"{e:.1e}") for m, e in zip(found, errors) if e > GRAD_TOLERANCE]
    if horizon == HORIZON and bad:
        raise RuntimeError(f"gradients differ from full_bptt's at T = {horizon}, so the work is not equal: {bad}")
    start = time.perf_counter()
    seconds = interleaved_times(compiled, repeats)
    print(f"T = {horizon:,}: timed, {repeats} rounds in {time.perf_counter() - start:.0f} s", flush=True)
    steps, counting = [], []
    for method in found:  # after the timing: the counting runs are slow
        start = time.perf_counter()
        steps.append(method.forward_steps())
        counting.append(time.perf_counter() - start)
    progress(horizon, "forward steps found", found, counting)
    return [
        Row(horizon, m.name, m.budget, temp, s, n, e) for m, temp, s, n, e in zip(found, temps, seconds, steps, errors)
    ]


def measure(
    horizons: Sequence[int],
    budgets: Sequence[int],
    checkpoints: Sequence[int],
    repeats: int,
    count_up_to: float = math.inf,
) -> list[Row]:
    """Rows of every horizon, ``full_bptt`` first at each; the ``budgets`` sweep at
    ``HORIZON``; the peers' forward steps counted at horizons up to ``count_up_to``."""
    rows = []
    for horizon in horizons:
        sweep = budgets if horizon == HORIZON else ()
        at = repeats if horizon < 100_000 else max(2, repeats // 3)
        rows += measure_horizon(horizon, sweep, checkpoints, at, horizon <= count_up_to)
    return rows


# ------------------------------------------------------------------------ the planner and the program size


class PlanRow(NamedTuple):
    horizon: int
    budget: int
    plan_seconds: float  # plan(T, m): the closed form
    program_seconds: float  # plan(T, m).actions() regrouped by checkpointing.program
    num_ops: int
    num_runs: int  # runs of stores (plain fused steps, then steps that store each state)
    num_stores: int
    array_bytes: int  # the action arrays the executor reads (ops, runs, back_slot)
    compile_seconds: float  # lowering and compiling checkpointed_bptt's estimate
    instructions: int  # HLO instructions of the compiled estimate (constants count one each)
    temp_bytes: int


def planner_rows(horizons: Sequence[int], budgets: Sequence[int]) -> list[PlanRow]:
    """The closed-form planner and the executor's size against T: the plan's time (median
    of 5, each with the binomial caches cleared), the regrouped program's, its arrays, and the compiled estimate (not run)."""
    from unroll.checkpointing import plan, program, repetitions, split

    rows = []
    for horizon in horizons:
        system, theta = rnn_system(horizon=horizon)
        for budget in budgets:
            times = []
            for _ in range(5):
                repetitions.cache_clear(), split.cache_clear()  # cold: nothing memoized from before
                start = time.perf_counter()
                schedule = plan(horizon, budget)
                times.append(time.perf_counter() - start)
            start = time.perf_counter()
            prog = program(schedule)
            program_seconds = time.perf_counter() - start
            arrays = sum(a.nbytes for a in prog.ops + prog.runs) + prog.back_slot.nbytes
            est = unroll.checkpointed_bptt(system, memory_budget=budget)
            state = jax.eval_shape(est.init, theta, jax.random.key(0))
            start = time.perf_counter()
            compiled = jax.jit(est.estimate).lower(theta, state, jax.random.key(1)).compile()
            compile_seconds = time.perf_counter() - start
            instructions = sum(" = " in line for line in compiled.as_text().splitlines())
            rows.append(
                PlanRow(
                    horizon,
                    budget,
                    statistics.median(times),
                    program_seconds,
                    len(prog.ops[0]),
                    int(prog.ops[4].sum()),
                    int(prog.runs[2][: prog.ops[4].sum()].sum()),
                    arrays,
                    compile_seconds,
                    instructions,
                    compiled.memory_analysis().temp_size_in_bytes,
                )
            )
            print(f"T = {horizon:,}, m = {budget}: planned and compiled", flush=True)
    return rows


def planner_table(rows: Sequence[PlanRow]) -> str:
    lines = [
        "The closed-form planner and the executor's size (checkpointed_bptt's estimate compiled, not run):",
        "",
        "| T | m | plan(T, m) (ms) | actions + program (s) | ops | runs of stores | stores | action arrays (MB) "
        "| compile (s) | HLO instructions | temp memory (KB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.horizon:,} | {r.budget} | {r.plan_seconds * 1e3:.2f} | {r.program_seconds:.2f} | {r.num_ops:,} "
            f"| {r.num_runs:,} | {r.num_stores:,} | {r.array_bytes / 1e6:.2f} | {r.compile_seconds:.1f} | {r.instructions:,} "
            f"| {r.temp_bytes / 1e3:,.1f} |"
        )
    slowest = max(rows, key=lambda r: r.plan_seconds)
    lines += [
        "",
        f"* Goal: plan(1e6, 100) under 1 s: {next((f'{r.plan_seconds * 1e3:.1f} ms' for r in rows if (r.horizon, r.budget) == (10**6, 100)), 'not run')} "
        f"(slowest plan here: {slowest.plan_seconds * 1e3:.1f} ms at T = {slowest.horizon:,}, m = {slowest.budget}).",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------ the goals, read by benchmarks/__main__


def reference(rows: Sequence[Row], horizon: int) -> Row | None:
    return next((r for r in rows if r.horizon == horizon and r.name == "full_bptt"), None)


def sweep_goal(rows: Sequence[Row]) -> list[Row]:
    """``checkpointed_bptt`` rows at ``HORIZON`` saving >= 95% of the memory at <= 1.25x the time."""
    base = reference(rows, HORIZON)
    return [
        r
        for r in rows
        if base is not None
        and r.horizon == HORIZON
        and r.name == "checkpointed_bptt"
        and 1 - r.temp_bytes / base.temp_bytes >= GOAL_SAVED
        and r.seconds / base.seconds <= GOAL_TIME
    ]


def equinox_ratios(rows: Sequence[Row], horizon: int) -> dict[int, float]:
    """``{m: checkpointed_bptt time / equinox time}`` at ``horizon``, for every m both ran."""
    peer = {r.budget: r.seconds for r in rows if r.horizon == horizon and r.name == "equinox"}
    return {
        r.budget: r.seconds / peer[r.budget]
        for r in rows
        if r.horizon == horizon and r.name == "checkpointed_bptt" and r.budget in peer
    }


def nested_goal(rows: Sequence[Row], horizon: int) -> tuple[Row | None, Row | None]:
    """The nested scans' row at ``horizon`` and our fastest row within their temp memory (None if none)."""
    peer = next((r for r in rows if r.horizon == horizon and r.name == "nested"), None)
    ours = [
        r
        for r in rows
        if peer is not None
        and r.horizon == horizon
        and r.name == "checkpointed_bptt"
        and r.temp_bytes <= peer.temp_bytes
    ]
    return peer, min(ours, key=lambda r: r.seconds) if ours else None


def full_goal(rows: Sequence[Row], horizon: int) -> float | None:
    """``checkpointed_bptt`` at ``GOAL_FULL_BUDGET`` over ``full_bptt``'s time at ``horizon`` (None if not run)."""
    base = reference(rows, horizon)
    ours = next(
        (r for r in rows if r.horizon == horizon and r.name == "checkpointed_bptt" and r.budget == GOAL_FULL_BUDGET),
        None,
    )
    return None if base is None or ours is None else ours.seconds / base.seconds


# ------------------------------------------------------------------------------ reporting


def machine(load_at_start: float) -> str:
    """The date, the machine and its load (the timings are wall-clock on a machine others may share)."""
    return (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
        f"({platform.processor() or 'cpu'}), {os.cpu_count()} CPU cores, load average {load_at_start:.1f} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end; python {platform.python_version()}."
    )


def budget_cell(r: Row) -> str:
    if r.name == "nested":
        return f"k = {r.budget} ({math.ceil(r.horizon / r.budget)} blocks)"
    return "-" if r.budget is None else str(r.budget)


def table(rows: Sequence[Row], load_at_start: float | None = None) -> str:
    lines = ([machine(load_at_start), ""] if load_at_start is not None else []) + [
        f"checkpointed_bptt vs full_bptt, equinox's checkpointed scan and jax.checkpoint-nested scans: tanh RNN "
        f"hidden {HIDDEN}; jax {jax.__version__}, equinox {equinox_version() or 'not installed'}, on "
        f"{jax.devices()[0].platform}. Forward steps: step evaluations per gradient, each step's evaluation for "
        "its own backward pass counted (full_bptt = T); grad error: largest |g - g_full| / max |g_full| over theta's "
        "leaves.",
        "",
        "| T | method | checkpoints / budget | temp memory (KB) | memory saved | forward steps | time per gradient (ms) "
        "| time / full_bptt | time / equinox (equal checkpoints) | grad error |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = reference(rows, r.horizon)
        ratio = equinox_ratios(rows, r.horizon).get(r.budget) if r.name == "checkpointed_bptt" else None
        ratio = 1.0 if r.name == "equinox" else ratio
        lines.append(
            f"| {r.horizon:,} | {LABELS[r.name]} | {budget_cell(r)} | {r.temp_bytes / 1e3:,.1f} "
            f"| {1 - r.temp_bytes / base.temp_bytes:.1%} | {'-' if r.forward_steps is None else f'{r.forward_steps:,}'} | {r.seconds * 1e3:,.2f} "
            f"| {r.seconds / base.seconds:.2f} | {'-' if ratio is None else f'{ratio:.2f}'} | {r.grad_error:.1e} |"
        )
    return "\n".join(lines + [""] + goal_lines(rows))


def goal_lines(rows: Sequence[Row]) -> list[str]:
    base, good = reference(rows, HORIZON), sweep_goal(rows)
    lines = []
    if base is not None:
        found = ", ".join(
            f"{r.budget} ({1 - r.temp_bytes / base.temp_bytes:.1%}, {r.seconds / base.seconds:.2f}x)" for r in good
        )
        lines.append(
            f"* Goal, T = {HORIZON:,}: >= {GOAL_SAVED:.0%} of full_bptt's memory saved at <= {GOAL_TIME}x its time: "
            + (f"met by memory_budget {found}." if good else "**not met** by any budget.")
        )
    for horizon in GOAL_HORIZONS:
        ratios = equinox_ratios(rows, horizon)
        if ratios:
            shown = ", ".join(f"m = {m}: {v:.2f}" for m, v in ratios.items())
            met = "met" if all(v <= 1 for v in ratios.values()) else "**not met**"
            lines.append(
                f"* Goal, T = {horizon:,}: checkpointed_bptt / equinox time at equal checkpoints <= 1: {shown} ({met})."
            )
    for horizon in GOAL_HORIZONS:
        peer, ours = nested_goal(rows, horizon)
        if peer is None:
            continue
        if ours is None:
            lines.append(
                f"* Goal, T = {horizon:,}: no checkpointed_bptt budget ran within the nested scans' memory (**NOT met**)."
            )
            continue
        met = "met" if ours.seconds <= peer.seconds else "**NOT met**"
        lines.append(
            f"* Goal, T = {horizon:,}: checkpointed_bptt at most the nested jax.checkpoint scans' time at no more than "
            f"their memory: m = {ours.budget}, {ours.seconds * 1e3:,.1f} ms and {ours.temp_bytes / 1e3:,.1f} KB against "
            f"{peer.seconds * 1e3:,.1f} ms and {peer.temp_bytes / 1e3:,.1f} KB (time {ours.seconds / peer.seconds:.2f}x, "
            f"memory {ours.temp_bytes / peer.temp_bytes:.2f}x) ({met})."
        )
    for horizon in GOAL_HORIZONS:
        ratio = full_goal(rows, horizon)
        if ratio is not None:
            met = "met" if ratio <= GOAL_FULL_TIME else "**NOT met**"
            lines.append(
                f"* Goal, T = {horizon:,}: checkpointed_bptt at m = {GOAL_FULL_BUDGET} <= {GOAL_FULL_TIME:.2f}x "
                f"full_bptt's time: {ratio:.2f}x ({met})."
            )
    return lines


def plot(rows: Sequence[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    horizons = sorted({r.horizon for r in rows})
    fig, axes = plt.subplots(1, len(horizons), figsize=(5 * len(horizons), 4), squeeze=False)
    styles = {"full_bptt": "ko", "checkpointed_bptt": "s-", "equinox": "^", "nested": "D"}
    for ax, horizon in zip(axes[0], horizons):
        for name, style in styles.items():
            mine = sorted((r for r in rows if r.horizon == horizon and r.name == name), key=lambda r: r.budget or 0)
            if not mine:
                continue
            ax.plot([r.seconds * 1e3 for r in mine], [r.temp_bytes / 1e3 for r in mine], style, label=LABELS[name])
            for r in mine if name != "full_bptt" else ():
                label = f"k={r.budget}" if name == "nested" else f"m={r.budget}"
                ax.annotate(
                    label, (r.seconds * 1e3, r.temp_bytes / 1e3), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))  # a few plain labels, not
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # overlapping ones
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.margins(x=0.15, y=0.1)  # room for the annotations
        ax.set_xlabel("time per gradient (ms)")
        ax.set_ylabel("compiled temp memory (KB)")
        ax.set_title(f"tanh RNN {HIDDEN}, T = {horizon:,}")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> tuple[list[Row], list[PlanRow]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", type=int, nargs="+", default=list(HORIZONS))
    parser.add_argument("--checkpoints", type=int, nargs="+", default=list(CHECKPOINTS), help="m for every method")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help=f"the sweep at T = {HORIZON}")
    parser.add_argument(
        "--repeats", type=int, default=15, help="a third of them (at least 2) at T >= 1e5 (15: the machine is shared)"
    )
    parser.add_argument(
        "--plan-horizons", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000], help="the planner table's T"
    )
    parser.add_argument(
        "--count-up-to",
        type=float,
        default=math.inf,
        help="count the peers' forward steps only up to this T (the counting run makes a host callback per step)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="T = 1e3 and 1e4, m = 10 and 100, 2 repeats, peers' steps counted at 1e3"
    )
    parser.add_argument("--out", help="also write the table (markdown) here")
    parser.add_argument("--png", help="write the memory-vs-time plot here")
    args = parser.parse_args(argv)
    if args.quick:
        args.horizons, args.budgets, args.repeats, args.count_up_to = [1000, 10_000], args.checkpoints, 2, 1000
        args.plan_horizons = [1000, 1_000_000]
    load_at_start = os.getloadavg()[0]
    planned = planner_rows(args.plan_horizons, args.checkpoints)
    rows = measure(args.horizons, args.budgets, args.checkpoints, args.repeats, args.count_up_to)
    report(table(rows, load_at_start) + "\n\n" + planner_table(planned), args.out)
    if args.png:
        plot(rows, args.png)
    return rows, planned


if __name__ == "__main__":
    main()
