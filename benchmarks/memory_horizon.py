"""Memory against the horizon: online estimators use memory independent of it.

What is measured
----------------
1. For a tanh RNN (hidden 32, inputs and targets computed from ``t``, so nothing in the
   system itself grows with the horizon) at horizons 1e3, 1e4 and 1e5: the compiled
   temporary memory of one ``estimate`` call (XLA's ``memory_analysis`` of the
   jit-compiled function: the buffers it allocates while running) and the size of the
   estimator state carried between calls, for ``pes``, ``nres``, ``rtrl``, ``uoro``,
   ``dni``, ``truncated_bptt`` (truncation 10, 4 workers, PES/NRES 8 particles each) and,
   for contrast, ``full_bptt`` and ``checkpointed_bptt`` (budget 100; its Gruslys planner
   is O(T^2 m), so it is left out above T = 20,000, where planning takes minutes). Each online
   estimator then really runs one window at every horizon (to show it runs).
2. The character language model (``unroll.tasks.char_lm``, LSTM hidden 128) at a sequence
   length (20,000 characters) where ``full_bptt`` would need more than a stated budget
   (64 MiB; compiled, not run):
   ``checkpointed_bptt`` trains there within the budget; its loss before and after a few
   outer steps and its seconds per step are printed.

Run ``python -m benchmarks.memory_horizon`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import unroll
from benchmarks.report import report
from unroll import registry, tasks

HIDDEN = 32
TRUNCATION = 10
WORKERS = 4
PARTICLES = 8
CHECKPOINT_BUDGET = 100
# the Gruslys planner is O(T^2 m) (numpy): 0.6 s at T = 4000, m = 50; about 10 min at T = 1e5
CHECKPOINT_MAX_HORIZON = 20_000

# every registered estimator, with the same workers, particles and window (unroll.registry)
SETTINGS = dict(
    truncation=TRUNCATION, sigma=0.01, num_particles=PARTICLES, num_workers=WORKERS,
    num_directions=PARTICLES, memory_budget=CHECKPOINT_BUDGET,
)  # fmt: skip
ESTIMATORS: dict[str, Callable[[unroll.System], unroll.Estimator]] = {
    name: functools.partial(registry.build, name, **SETTINGS) for name in registry.ESTIMATORS
}
ONLINE = tuple(name for name, entry in registry.ESTIMATORS.items() if entry.windowed)  # run one window too


def rnn_system(horizon: int, hidden: int = HIDDEN) -> unroll.System:
    """``h' = tanh(W h + U u_t + b)``, ``u_t = sin(t f)`` (4 fixed frequencies), loss
    ``(r . h' - sin(2 pi t / 25))^2 / 2``: inputs and targets are functions of ``t``."""
    freqs = jnp.asarray([0.05, 0.11, 0.23, 0.41], jnp.float32)

    def init(theta, key):
        return 0.1 * jax.random.normal(key, (hidden,), jnp.float32)

    def step(theta, h, t):
        u = jnp.sin(t.astype(jnp.float32) * freqs)
        h = jnp.tanh(theta["W"] @ h + theta["U"] @ u + theta["b"])
        return h, 0.5 * (theta["readout"] @ h - jnp.sin(2 * math.pi * t.astype(jnp.float32) / 25)) ** 2

    return unroll.System(init, step, horizon)


def rnn_theta(hidden: int = HIDDEN) -> dict:
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "W": 0.9 * jax.random.normal(keys[0], (hidden, hidden)) / math.sqrt(hidden),
        "U": jax.random.normal(keys[1], (hidden, 4)) / 2.0,
        "b": jnp.zeros(hidden),
        "readout": jax.random.normal(keys[2], (hidden,)) / math.sqrt(hidden),
    }


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "dtype"))


class Cost(NamedTuple):
    temp_bytes: int
    state_bytes: int
    ran: bool


def estimate_cost(estimator: unroll.Estimator, theta, run: bool) -> Cost:
    """Compiled temporary bytes of ``estimate`` and the state's bytes (from shapes: nothing
    is allocated unless ``run``, which also runs one window)."""
    key = jax.random.PRNGKey(1)
    state_shape = jax.eval_shape(estimator.init, theta, key)
    compiled = jax.jit(estimator.estimate).lower(theta, state_shape, key).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    if run:
        state = jax.jit(estimator.init)(theta, key)
        grad, _, _ = compiled(theta, state, key)
        jax.block_until_ready(grad)
    return Cost(temp, tree_bytes(state_shape), run)


def mb(num_bytes: float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num_bytes >= size:
            return f"{num_bytes / size:,.1f} {unit}"
    return f"{num_bytes:,.0f} B"


def measure_horizons(horizons: Sequence[int]) -> dict[tuple[str, int], Cost]:
    theta = rnn_theta()
    costs = {}
    for horizon in horizons:
        system = rnn_system(horizon)
        for name, make in ESTIMATORS.items():
            if name == "checkpointed-bptt" and horizon > CHECKPOINT_MAX_HORIZON:
                continue  # its plan would take minutes (see CHECKPOINT_MAX_HORIZON)
            if name == "parallel-bptt":
                continue  # it needs a parallel form `episode`, which this tanh RNN has not (deer solves it)
            costs[name, horizon] = estimate_cost(make(system), theta, run=name in ONLINE)
            print(f"  {name} at horizon {horizon}: {mb(costs[name, horizon].temp_bytes)}", flush=True)
    return costs


def horizon_table(costs: dict[tuple[str, int], Cost], horizons: Sequence[int]) -> str:
    head = "| estimator | " + " | ".join(f"temp / state at T = {h:,}" for h in horizons) + " | grows with T? |"
    lines = [head, "|---|" + "---:|" * len(horizons) + ":---:|"]
    for name in ESTIMATORS:
        row = [costs.get((name, h)) for h in horizons]
        done = [c for c in row if c is not None]
        if not done:
            continue  # not measured on this system (parallel-bptt)
        grows = done[-1].temp_bytes + done[-1].state_bytes > 1.5 * (done[0].temp_bytes + done[0].state_bytes)
        lines.append(
            f"| {name} | "
            + " | ".join(
                "not planned (O(T^2 m) planner)" if c is None else f"{mb(c.temp_bytes)} / {mb(c.state_bytes)}"
                for c in row
            )
            + f" | {'yes' if grows else 'no'} |"
        )
    return "\n".join(lines)


def plot(costs: dict[tuple[str, int], Cost], horizons: Sequence[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(ESTIMATORS):
        done = [h for h in horizons if (name, h) in costs]
        if not done:
            continue
        total = [costs[name, h].temp_bytes + costs[name, h].state_bytes for h in done]
        ax.plot(done, total, "o-" if name in ONLINE else "s--", color=f"C{i}", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("horizon T")
    ax.set_ylabel("bytes: compiled temp of one estimate + state")
    ax.set_title("memory against the horizon (solid: online estimators)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class LMResult(NamedTuple):
    length: int
    budget_bytes: float
    full_temp_bytes: int
    checkpointed_temp_bytes: int
    memory_budget: int
    steps: int
    loss_before: float
    loss_after: float
    seconds_per_step: float
    forward_steps_per_char: float


def char_lm_run(length: int, budget_gib: float, memory_budget: int, steps: int) -> LMResult:
    """Compiles (only) full_bptt and trains checkpointed_bptt on the character LM."""
    system, theta, _ = tasks.char_lm(horizon=length, cell="lstm", hidden=128)
    full = estimate_cost(unroll.full_bptt(system), theta, run=False)
    estimator = unroll.checkpointed_bptt(system, memory_budget=memory_budget)
    checkpointed = estimate_cost(estimator, theta, run=False)
    fixed_loss = jax.jit(lambda th: unroll.episode_loss(system, th, jax.random.PRNGKey(5)))
    loss_before = float(fixed_loss(theta))
    trained, history = unroll.train(estimator, optax.adam(3e-3), theta, jax.random.PRNGKey(0), steps, progress=False)
    plan = unroll.checkpointing.plan(length, memory_budget)
    return LMResult(
        length,
        budget_gib * 2**30,
        full.temp_bytes,
        checkpointed.temp_bytes,
        memory_budget,
        steps,
        loss_before,
        float(fixed_loss(trained)),
        float(history["train_time_s"]) / steps,
        plan.forward_steps / length,
    )


def char_lm_table(r: LMResult) -> str:
    within = lambda b: "yes" if b <= r.budget_bytes else "no"
    return "\n".join(
        [
            f"Character LM (LSTM hidden 128, python docs corpus), one sequence of {r.length:,} characters per outer step; "
            f"memory budget {mb(r.budget_bytes)}.",
            "",
            "| estimator | compiled temp memory | within the budget? | ran |",
            "|---|---:|:---:|---|",
            f"| full_bptt | {mb(r.full_temp_bytes)} | {within(r.full_temp_bytes)} | no (compiled only) |",
            f"| checkpointed_bptt ({r.memory_budget} states) | {mb(r.checkpointed_temp_bytes)} | "
            f"{within(r.checkpointed_temp_bytes)} | {r.steps} outer steps of adam(3e-3): loss on a fixed sequence "
            f"{r.loss_before:.3f} -> {r.loss_after:.3f} nats, {r.seconds_per_step:.1f} s per step "
            f"({r.forward_steps_per_char:.2f} forward steps per character) |",
        ]
    )


def header() -> str:
    device = jax.devices()[0]
    return (
        f"Memory against the horizon; jax {jax.__version__}, {device.platform} ({device.device_kind}), "
        f"python {platform.python_version()}, float32.\n"
        "temp = XLA's compiled temporary memory of one `estimate` call; state = the estimator state carried "
        f"between calls. Online estimators: truncation {TRUNCATION}, {WORKERS} workers (PES/NRES "
        f"{PARTICLES} particles each), tanh RNN hidden {HIDDEN}."
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--horizons", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--lm-length", type=int, default=20_000, help="char LM sequence length")
    parser.add_argument("--lm-budget-gib", type=float, default=1 / 16, help="the stated memory budget (GiB)")
    parser.add_argument("--lm-states", type=int, default=100, help="checkpointed_bptt memory_budget (states)")
    parser.add_argument("--lm-steps", type=int, default=5, help="outer steps of char LM training")
    parser.add_argument("--quick", action="store_true", help="horizons 1e3, 1e4; char LM length 20,000, 2 steps")
    parser.add_argument("--out", help="also write the tables (markdown) here")
    parser.add_argument("--png", help="write the memory-vs-horizon plot here")
    args = parser.parse_args(argv)
    if args.quick:
        args.horizons, args.lm_length, args.lm_steps = [1_000, 10_000], 5_000, 2
    print(header(), flush=True)
    costs = measure_horizons(args.horizons)
    if args.png:
        plot(costs, args.horizons, args.png)
    lm = char_lm_run(args.lm_length, args.lm_budget_gib, args.lm_states, args.lm_steps)
    text = header() + "\n\n" + horizon_table(costs, args.horizons) + "\n\n" + char_lm_table(lm)
    report(text, args.out)
    return {"costs": costs, "horizons": args.horizons, "lm": lm}


if __name__ == "__main__":
    main()
