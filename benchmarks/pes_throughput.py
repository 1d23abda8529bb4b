"""Throughput of ``unroll.pes`` against the forward floor.

What is measured
----------------
*Inner steps x particles per second*: system steps taken, summed over all
trajectories, per second of wall-clock time, for

* **pes**: ``unroll.pes(system, truncation=10, sigma=0.1, num_particles=P,
  num_workers=W)``, ``windows`` consecutive windows per timed block, driven at its
  best: ``estimate`` inside one jit-compiled ``lax.scan`` over windows (as evosax is
  driven in the peer benchmark: ask, unroll, tell in one scan). The last column
  gives the ratio when instead the compiled ``estimate`` is called once per window
  from Python, which adds a fixed dispatch cost per window. A window takes
  ``W * P * truncation`` steps;
* **evosax**: evosax's ``PersistentES`` (version pinned by the ``bench`` extra:
  ``pip install -e '.[bench]'``) on the same task, same run, driven at its best: ask,
  unroll of every particle for one window and tell, in one jit-compiled ``lax.scan``
  over windows. evosax leaves episodes to the caller and resets every particle at once
  (no stagger); that is what is done. Skipped (and said so in the table) when evosax
  is not installed;
* **floor**: the same number of steps for the same number of trajectories with no
  estimation: one jitted ``vmap`` over trajectories of one ``lax.scan`` of
  ``system.step`` at fixed perturbed thetas ``theta + eps``, with the same
  lazy episode resets (``system.init`` with a fresh key when ``t`` reaches the
  horizon) and the same stagger offsets. The reset is a ``lax.cond`` on whether
  any trajectory resets at that step, so ``system.init`` runs only on those steps
  (pes builds each trajectory's next episode once per window).

"particles" in the table is the **total number of trajectories**,
``num_workers * num_particles`` (``num_particles`` being pes's per-worker count,
antithetic pairs included). They split into ``W = min(8, total / 2)`` workers of
``total / W`` particles each (16 = 8 x 2, 256 = 8 x 32, 2048 = 8 x 256). Workers
are staggered over the episode (worker ``w`` starts ``w * horizon // W`` steps in),
so with horizon 1000 and truncation 10 the odd workers reset in the middle of a
window.

Both are compiled and warmed up first, then timed in interleaved blocks (pes then
floor, floor then pes, ...), each block ending in ``block_until_ready``, so both
see the same load of a shared machine. The throughputs are medians over blocks and
the ratio is pes's median over the floor's; the quartiles of the ratios of adjacent
blocks are printed as a noise gauge. The compile time of pes's jitted ``estimate``
(lower + compile) is printed too.

Goals: pes runs at **>= 0.95** of the floor's throughput, with staggered resets, and at
least at evosax's throughput, at every size.

Task: tuning SGD with momentum on linear regression. ``X`` (256 x 32),
``w* ~ N(0, I)`` and ``y = X w* + 0.1 noise`` come from a fixed key; the inner
state is ``(w, velocity)``, ``w`` drawn from the episode key at each reset; each
step is one full-batch step

    r = X w - y;  loss = mean(r^2) / 2;  g = X^T r / n
    v <- mu v + g;  w <- w - lr v

with ``theta = {"log_lr": log(lr), "logit_momentum": logit(mu)}`` (``lr = exp``,
``mu = sigmoid``: both stay in range under any perturbation), at
``lr = 0.05, mu = 0.9``; horizon 1000, truncation 10, sigma 0.1.

Run ``python -m benchmarks.pes_throughput`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import unroll
from benchmarks.cli import fill_defaults, positive_int
from benchmarks.report import report

PyTree = Any

GOAL = 0.95
HORIZON = 1000
TRUNCATION = 10
SIGMA = 0.1
DIM = 32
NUM_EXAMPLES = 256
DATA_SEED = 0
MAX_WORKERS = 8
THETA0 = {"log_lr": math.log(0.05), "logit_momentum": math.log(0.9 / 0.1)}


# --------------------------------------------------------------------------- task


def regression_system(
    horizon: int = HORIZON, dim: int = DIM, num_examples: int = NUM_EXAMPLES, seed: int = DATA_SEED
) -> unroll.System:
    """Full-batch SGD with momentum on a fixed least-squares problem (see module doc)."""
    x_key, w_key, noise_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(x_key, (num_examples, dim))
    y = x @ jax.random.normal(w_key, (dim,)) + 0.1 * jax.random.normal(noise_key, (num_examples,))

    def init(theta: PyTree, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        del theta
        return 0.1 * jax.random.normal(key, (dim,)), jnp.zeros(dim)

    def step(
        theta: PyTree, state: tuple[jax.Array, jax.Array], t: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        del t
        w, velocity = state
        lr, momentum = jnp.exp(theta["log_lr"]), jax.nn.sigmoid(theta["logit_momentum"])
        residual = x @ w - y
        velocity = momentum * velocity + x.T @ residual / num_examples
        return (w - lr * velocity, velocity), 0.5 * jnp.mean(residual**2)

    return unroll.System(init, step, horizon)


def initial_theta() -> dict[str, jax.Array]:
    """``lr = 0.05``, ``momentum = 0.9`` in the log / logit parameterization."""
    return {name: jnp.asarray(value, jnp.float32) for name, value in THETA0.items()}


# ------------------------------------------------------------------ the two loops


class Layout(NamedTuple):
    """How ``total`` trajectories split into staggered workers."""

    total: int
    workers: int

    @property
    def per_worker(self) -> int:
        return self.total // self.workers

    @property
    def steps_per_window(self) -> int:
        return self.total * TRUNCATION


def layout(total: int, max_workers: int = MAX_WORKERS) -> Layout:
    """``min(max_workers, total / 2)`` workers, each with an even share of the particles."""
    workers = max(1, min(max_workers, total // 2))
    if total % workers or (total // workers) % 2:
        raise ValueError(
            f"--particles {total} does not split into {workers} workers of an even (antithetic) "
            f"number of particles; use a multiple of {2 * workers}."
        )
    return Layout(total, workers)


class Loop:
    """A compiled computation that advances its own carried state; ``timed()``
    runs one block and returns its wall-clock seconds."""

    def __init__(self, advance: Callable[[PyTree], PyTree], carry: PyTree):
        self.advance, self.carry = advance, carry

    def timed(self) -> float:
        start = time.perf_counter()
        self.carry = jax.block_until_ready(self.advance(self.carry))
        return time.perf_counter() - start


def pes_loops(
    system: unroll.System, theta: PyTree, lay: Layout, windows: int, key: jax.Array
) -> tuple[Loop, Loop, float]:
    """``windows`` consecutive pes windows two ways, from one estimator and one state: its
    ``estimate`` inside one jit-compiled ``lax.scan`` over windows (pes at its best, as a
    compiled training loop drives it), and one Python call of the compiled ``estimate`` per
    window. Also returns the compile time of one ``estimate`` (lower + compile, seconds)."""
    est = unroll.pes(system, truncation=TRUNCATION, sigma=SIGMA, num_particles=lay.per_worker, num_workers=lay.workers)
    init_key, window_key = jax.random.split(key)
    state = jax.block_until_ready(jax.jit(est.init)(theta, init_key))
    window_keys = jax.random.split(window_key, windows)
    start = time.perf_counter()
    estimate = jax.jit(est.estimate).lower(theta, state, window_keys[0]).compile()
    compile_s = time.perf_counter() - start

    @jax.jit
    def in_scan(carry):
        def body(state, window_key):
            grad, state, _ = est.estimate(theta, state, window_key)
            return state, grad

        state, grads = jax.lax.scan(body, carry[0], window_keys)
        return state, jax.tree_util.tree_map(lambda g: g[-1], grads)

    def per_call(carry):
        state, grad = carry
        for window_key in window_keys:
            grad, state, _ = estimate(theta, state, window_key)
        return state, grad

    # the carried gradient starts with theta's structure, so the first timed block runs the
    # compiled advance rather than compiling it again for (state, grad) after (state, None)
    carry = (state, jax.tree_util.tree_map(jnp.zeros_like, theta))
    return Loop(in_scan, carry), Loop(per_call, carry), compile_s


def floor_scan(system: unroll.System, num_steps: int) -> Callable:
    """One ``lax.scan`` of ``num_steps`` steps of all trajectories at once (vmapped
    inside the scan), each at its own theta, with lazy resets (fresh key) when ``t``
    hits the horizon. The reset is a ``lax.cond`` on "does any trajectory reset at
    this step", an unbatched predicate, so ``system.init`` runs only on the steps
    where some trajectory resets: a strict floor. Maps
    ``(thetas, (states, ts, keys), loss_sums)`` to the advanced trajectories and loss
    sums (kept so that the losses are computed)."""

    def reset_one(theta, trajectory):
        state, t, key = trajectory
        next_key, episode_key = jax.random.split(key)
        new = t >= system.horizon
        fresh = system.init(theta, episode_key)
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(new, a, b), fresh, state)
        return state, jnp.where(new, 0, t), jnp.where(new, next_key, key)

    def run(thetas, trajectories, loss_sums):
        def body(carry, _):
            trajectories, loss_sums = carry
            trajectories = jax.lax.cond(
                jnp.any(trajectories[1] >= system.horizon),
                lambda c: jax.vmap(reset_one)(thetas, c),
                lambda c: c,
                trajectories,
            )
            states, ts, keys = trajectories
            states, losses = jax.vmap(system.step)(thetas, states, ts)
            return ((states, ts + 1, keys), loss_sums + losses), None

        return jax.lax.scan(body, (trajectories, loss_sums), length=num_steps)[0]

    return jax.jit(run)


def perturbed_thetas(theta: PyTree, key: jax.Array, num: int) -> PyTree:
    """``theta + eps``, ``eps ~ N(0, SIGMA^2 I)``, with a leading axis of ``num`` trajectories."""
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    keys = jax.random.split(key, len(leaves))
    perturbed = [x + SIGMA * jax.random.normal(k, (num, *jnp.shape(x))) for k, x in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, perturbed)


def floor_loop(system: unroll.System, theta: PyTree, lay: Layout, num_steps: int, key: jax.Array) -> Loop:
    """The floor over the same trajectories as pes: perturbed thetas, worker ``w``
    starting ``w * horizon // W`` steps into its episode, particles of a worker sharing
    its episode keys."""
    noise_key, worker_key = jax.random.split(key)
    thetas = perturbed_thetas(theta, noise_key, lay.total)

    def per_particle(per_worker: jax.Array) -> jax.Array:
        return jnp.repeat(per_worker, lay.per_worker, axis=0)

    keys = per_particle(jax.random.split(worker_key, lay.workers))
    offsets = per_particle((jnp.arange(lay.workers, dtype=jnp.int32) * system.horizon) // lay.workers)
    trajectories = (jax.vmap(system.init)(thetas, keys), offsets, keys)
    scan = floor_scan(system, num_steps)
    return Loop(lambda carry: scan(thetas, *carry), (trajectories, jnp.zeros(lay.total)))


def evosax_loop(system: unroll.System, theta: PyTree, lay: Layout, windows: int, key: jax.Array) -> Loop | None:
    """evosax's ``PersistentES`` (pinned by the ``bench`` extra) driven at its best: ask,
    unroll of all ``lay.total`` particles for one window and tell, in one jit-compiled
    ``lax.scan`` over windows. evosax leaves the inner episodes to the caller and resets
    every particle at once when its step counter reaches the horizon (no stagger), which
    is what is done here (all particles share one episode key, as one of pes's workers).
    ``None`` when evosax is not installed."""
    try:
        import optax
        from evosax.algorithms import PersistentES
    except ImportError:
        return None
    strategy = PersistentES(
        population_size=lay.total,
        solution=theta,
        optimizer=optax.sgd(1e-3),
        std_schedule=optax.constant_schedule(SIGMA),
    )
    params = strategy.default_params.replace(T=system.horizon, K=TRUNCATION)
    init_key, episode_key, window_key = jax.random.split(key, 3)
    es_state = strategy.init(init_key, theta, params)
    population, _ = strategy.ask(init_key, es_state, params)
    inner = jax.vmap(system.init, in_axes=(0, None))(population, episode_key)
    window_keys = jax.random.split(window_key, windows)

    def unroll_window(theta_i, state, t0):
        def body(carry, k):
            state, total = carry
            state, loss = system.step(theta_i, state, t0 + k)
            return (state, total + loss), None

        (state, total), _ = jax.lax.scan(body, (state, jnp.zeros(())), jnp.arange(TRUNCATION))
        return state, total

    def window(carry, key):
        es_state, inner, t = carry
        ask_key, tell_key, reset_key = jax.random.split(key, 3)
        population, es_state = strategy.ask(ask_key, es_state, params)
        inner = jax.lax.cond(
            t == 0, lambda: jax.vmap(system.init, in_axes=(0, None))(population, reset_key), lambda: inner
        )
        inner, fitness = jax.vmap(unroll_window, in_axes=(0, 0, None))(population, inner, t)
        es_state, _ = strategy.tell(tell_key, population, fitness, es_state, params)
        return (es_state, inner, (t + TRUNCATION) % system.horizon), None

    advance = jax.jit(lambda carry: jax.lax.scan(window, carry, window_keys)[0])
    return Loop(advance, (es_state, inner, jnp.asarray(0, jnp.int32)))


def evosax_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evosax")
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------- measuring


class Row(NamedTuple):
    layout: Layout
    windows: int
    pes_steps_per_s: float
    floor_steps_per_s: float
    ratio: float
    ratio_iqr: tuple[float, float]
    compile_s: float
    per_call_ratio: float  # pes called once per window from Python, over the floor
    evosax_steps_per_s: float | None  # evosax's PersistentES at its best (None: not installed)


def measure(lay: Layout, windows: int, repeats: int, seed: int = 0) -> Row:
    """Times pes, pes called per window, evosax (if installed) and the floor in
    interleaved blocks of ``windows`` windows' steps (the order reversed every other
    repeat), so all see the same load."""
    system, theta = regression_system(), initial_theta()
    pes_key, floor_key, evosax_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    pes, per_call, compile_s = pes_loops(system, theta, lay, windows, pes_key)
    floor = floor_loop(system, theta, lay, windows * TRUNCATION, floor_key)
    evosax = evosax_loop(system, theta, lay, windows, evosax_key)
    loops = [loop for loop in (pes, per_call, evosax, floor) if loop is not None]
    for loop in loops:
        # warm-up, twice: evosax's state comes back from the first call with weak types made
        # strong, and that changed carry compiles its advance again
        loop.timed()
        loop.timed()
    times: dict[Loop, list[float]] = {loop: [] for loop in loops}
    for repeat in range(repeats):
        for loop in loops if repeat % 2 == 0 else loops[::-1]:
            times[loop].append(loop.timed())
    pes_s, floor_s = times[pes], times[floor]
    steps = windows * lay.steps_per_window
    rate = lambda loop: steps / statistics.median(times[loop])
    paired = [f / p for p, f in zip(pes_s, floor_s)]
    return Row(
        lay,
        windows,
        rate(pes),
        rate(floor),
        rate(pes) / rate(floor),
        quartiles(paired),
        compile_s,
        rate(per_call) / rate(floor),
        rate(evosax) if evosax is not None else None,
    )


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (the value itself for a single one)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def markdown_table(rows: Sequence[Row]) -> str:
    """particles, workers, pes steps/s, floor steps/s, ratio, goal met?, evosax's PES
    against the floor and pes against evosax, then the particles per worker, windows per
    timed block, the interquartile range of the per-block ratios (a noise gauge), pes's
    compile time and the ratio when pes is called once per window from Python."""
    lines = [
        "| particles (total trajectories) | workers | pes steps/s | floor steps/s | ratio pes/floor "
        f"| goal >= {GOAL} met? | evosax PES / floor | pes / evosax PES | particles per worker | windows per block "
        "| block ratios IQR | pes compile s | ratio, one Python call per window |",
        "|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for row in rows:
        if row.evosax_steps_per_s is None:
            evosax = "not installed (`pip install -e '.[bench]'`) | -"
        else:
            evosax = f"{row.evosax_steps_per_s / row.floor_steps_per_s:.3f} | {row.pes_steps_per_s / row.evosax_steps_per_s:.3f}"
        lines.append(
            f"| {row.layout.total} | {row.layout.workers} | {row.pes_steps_per_s:,.0f} "
            f"| {row.floor_steps_per_s:,.0f} | {row.ratio:.3f} | {'yes' if row.ratio >= GOAL else 'no'} | {evosax} "
            f"| {row.layout.per_worker} | {row.windows} | {row.ratio_iqr[0]:.2f}-{row.ratio_iqr[1]:.2f} "
            f"| {row.compile_s:.2f} | {row.per_call_ratio:.3f} |"
        )
    return "\n".join(lines)


def windows_for(lay: Layout, windows: int, max_block_steps: int) -> int:
    """``windows``, lowered (to no fewer than one) so that a timed block takes at most
    ``max_block_steps`` steps x particles."""
    return max(1, min(windows, max_block_steps // lay.steps_per_window))


# --------------------------------------------------------------------------- CLI


FULL = {"particles": [16, 256, 2048], "repeats": 11, "windows": 100}
QUICK = {"particles": [16, 256], "repeats": 3, "windows": 10}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The CLI; flags given explicitly win over ``--quick``'s settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--particles",
        type=positive_int,
        nargs="+",
        help=f"total trajectories, num_workers x num_particles (default: {FULL['particles']})",
    )
    parser.add_argument(
        "--repeats", type=positive_int, help=f"timed blocks per method, interleaved (default: {FULL['repeats']})"
    )
    parser.add_argument(
        "--windows",
        type=positive_int,
        help=f"pes windows per timed block; the floor runs as many steps (default: {FULL['windows']}, "
        "lowered where a block would exceed --max-block-steps)",
    )
    parser.add_argument(
        "--max-block-steps",
        type=positive_int,
        default=1_000_000,
        help="cap on steps x particles per timed block (default: 1e6)",
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--out", type=str, default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    fill_defaults(args, FULL, QUICK)
    return args


def header(args: argparse.Namespace) -> str:
    device = jax.devices()[0]
    return (
        f"pes throughput vs forward floor: linear-regression SGD+momentum tuning (d={DIM}, n={NUM_EXAMPLES}), "
        f"horizon={HORIZON}, truncation={TRUNCATION}, sigma={SIGMA}, repeats={args.repeats}\n"
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), python {platform.python_version()}, "
        f"evosax {evosax_version() or 'not installed'}\n"
        "steps/s = inner steps x trajectories per second (median over blocks); ratio = pes/floor of those "
        "medians; block ratios IQR = quartiles of pes/floor over adjacent interleaved blocks"
    )


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    print(header(args), flush=True)
    rows = []
    for total in args.particles:
        lay = layout(total)
        windows = windows_for(lay, args.windows, args.max_block_steps)
        print(
            f"  {total} particles = {lay.workers} workers x {lay.per_worker}, {windows} windows per block", flush=True
        )
        rows.append(measure(lay, windows, args.repeats))
    table = markdown_table(rows)
    report(table, args.out, header(args))
    return rows


if __name__ == "__main__":
    main()
