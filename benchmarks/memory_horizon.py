"""Memory against the horizon: online estimators use memory independent of it.

What is measured
----------------
1. For a tanh RNN (hidden 32, inputs and targets computed from ``t``, so nothing in the
   system itself grows with the horizon) at horizons 1e3, 1e4 and 1e5: the compiled
   temporary memory of one ``estimate`` call (XLA's ``memory_analysis`` of the
   jit-compiled function: the buffers it allocates while running) and the size of the
   estimator state carried between calls, for every estimator of ``unroll.registry``
   with the same settings (truncation 10, 4 workers, PES/NRES 8 particles each,
   ``checkpointed_bptt`` budget 100 states) but ``parallel_bptt`` (it needs a parallel
   form, which this RNN has not). Each online (windowed) estimator then really runs one
   window at every horizon (to show it runs); the others are only compiled.
2. The character language model (``unroll.tasks.char_lm``, LSTM hidden 128) at a sequence
   length (100,000 characters) where ``full_bptt`` would need more than a stated budget
   (64 MiB; compiled, not run): ``checkpointed_bptt`` (1000 stored states) trains there
   within the budget, 100 outer steps of adam. Its loss curve (the training loss of
   every outer step and the validation bits per character every tenth of the run), its
   seconds per step and forward steps per character are printed and plotted (second
   panel of ``--png``).

Run ``python -m benchmarks.memory_horizon`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unroll
from benchmarks.report import report
from unroll import registry, tasks

HIDDEN = 32
TRUNCATION = 10
WORKERS = 4
PARTICLES = 8
CHECKPOINT_BUDGET = 100
LM_HIDDEN = 128
LM_LEARNING_RATE = 3e-3
LM_EVALUATIONS = 10  # validation points over the run, besides the one before the first step

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
            + " | ".join("-" if c is None else f"{mb(c.temp_bytes)} / {mb(c.state_bytes)}" for c in row)
            + f" | {'yes' if grows else 'no'} |"
        )
    return "\n".join(lines)


class LMResult(NamedTuple):
    length: int
    budget_bytes: float
    full_temp_bytes: int
    checkpointed_temp_bytes: int
    memory_budget: int  # states
    forward_steps_per_char: float
    vocab_size: int
    steps: int  # outer steps run
    train_loss: np.ndarray  # [steps] nats per character of each step's training sequence, before its update
    eval_steps: np.ndarray  # outer steps at which ...
    eval_bits: np.ndarray  # ... the validation bits per character was measured
    seconds_per_step: float  # training only (compile and evaluation excluded)
    seconds: float  # the whole char LM part: compiling both, training and evaluating

    @property
    def loss_decreased(self) -> bool:
        return bool(self.eval_bits[-1] < self.eval_bits[0])


def char_lm_run(length: int, budget_gib: float, memory_budget: int, steps: int) -> LMResult:
    """Compiles (only) full_bptt and trains checkpointed_bptt on the character LM, evaluating
    the validation bits per character ``LM_EVALUATIONS`` times over the run."""
    start = time.perf_counter()
    system, theta, evaluate = tasks.char_lm(horizon=length, cell="lstm", hidden=LM_HIDDEN)
    full = estimate_cost(unroll.full_bptt(system), theta, run=False)
    estimator = unroll.checkpointed_bptt(system, memory_budget=memory_budget)
    checkpointed = estimate_cost(estimator, theta, run=False)
    print(f"  char LM at {length:,}: full_bptt {mb(full.temp_bytes)}, checkpointed_bptt {mb(checkpointed.temp_bytes)}")
    _, history = unroll.train(
        estimator,
        optax.adam(LM_LEARNING_RATE),
        theta,
        jax.random.PRNGKey(0),
        steps,
        eval_fn=lambda th: {"bits_per_char": evaluate(th)["bits_per_char"]},
        eval_every=max(1, steps // LM_EVALUATIONS),
        progress=False,
    )
    done = len(history["loss"])
    return LMResult(
        length=length,
        budget_bytes=budget_gib * 2**30,
        full_temp_bytes=full.temp_bytes,
        checkpointed_temp_bytes=checkpointed.temp_bytes,
        memory_budget=memory_budget,
        forward_steps_per_char=unroll.checkpointing.plan(length, memory_budget).forward_steps / length,
        vocab_size=int(theta["embedding"].shape[0]),
        steps=done,
        train_loss=np.asarray(history["loss"]),
        eval_steps=np.asarray(history["eval_step"]),
        eval_bits=np.asarray(history["eval/bits_per_char"]),
        seconds_per_step=float(history["train_time_s"]) / done,
        seconds=time.perf_counter() - start,
    )


def char_lm_table(r: LMResult) -> str:
    within = lambda b: "yes" if b <= r.budget_bytes else "no"
    points = ", ".join(f"({s}, {b:.2f})" for s, b in zip(r.eval_steps, r.eval_bits))
    first, last = r.train_loss[0] / math.log(2), r.train_loss[-1] / math.log(2)
    return "\n".join(
        [
            f"Character LM (LSTM hidden {LM_HIDDEN}, python docs corpus, {r.vocab_size} characters), one sequence of "
            f"{r.length:,} characters per outer step; memory budget {mb(r.budget_bytes)}.",
            "",
            "| estimator | compiled temp memory | within the budget? | ran |",
            "|---|---:|:---:|---|",
            f"| full_bptt | {mb(r.full_temp_bytes)} | {within(r.full_temp_bytes)} | no (compiled only) |",
            f"| checkpointed_bptt ({r.memory_budget} states) | {mb(r.checkpointed_temp_bytes)} | "
            f"{within(r.checkpointed_temp_bytes)} | {r.steps} outer steps of adam({LM_LEARNING_RATE:g}), "
            f"{r.seconds_per_step:.1f} s per step ({r.forward_steps_per_char:.2f} forward steps per character); "
            f"{r.seconds:.0f} s in all, compiling and evaluating included |",
            "",
            f"Loss curve: validation bits per character (64 sequences of 256 characters; uniform: "
            f"{math.log2(r.vocab_size):.2f}) at (outer step, bits): {points}. "
            f"Training loss of each step's own sequence (before its update): {first:.2f} bits per character at "
            f"step 0, {last:.2f} at step {r.steps - 1}. "
            f"The validation loss {'decreased' if r.loss_decreased else 'did not decrease'}.",
        ]
    )


def plot(costs: dict[tuple[str, int], Cost], horizons: Sequence[int], lm: LMResult, path: str) -> None:
    """Two panels: memory against the horizon, and the char LM's loss curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, curve) = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, name in enumerate(ESTIMATORS):
        done = [h for h in horizons if (name, h) in costs]
        if not done:
            continue
        total = [costs[name, h].temp_bytes + costs[name, h].state_bytes for h in done]
        ax.plot(done, total, "o-" if name in ONLINE else "s--", color=plt.cm.tab20(i % 20), label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("horizon T")
    ax.set_ylabel("bytes: compiled temp of one estimate + state")
    ax.set_title("memory against the horizon (solid: online estimators)")
    ax.legend(fontsize=7, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    plot_lm_curve(curve, lm)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_lm_curve(ax, lm: LMResult) -> None:
    steps = range(len(lm.train_loss))  # step k's loss is that of theta after k updates, as eval_steps count
    ax.plot(steps, lm.train_loss / math.log(2), "-", color="C0", lw=1, label="training sequence (this step's)")
    ax.plot(lm.eval_steps, lm.eval_bits, "o-", color="C3", label="validation (64 x 256 characters)")
    ax.axhline(math.log2(lm.vocab_size), color="gray", ls=":", lw=1, label=f"uniform over {lm.vocab_size} characters")
    ax.set_xlabel("outer step")
    ax.set_ylabel("bits per character")
    ax.set_title(
        f"char LM, checkpointed_bptt ({lm.memory_budget} states) at T = {lm.length:,}, adam({LM_LEARNING_RATE:g})"
    )
    ax.legend(fontsize=8)


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
    parser.add_argument("--lm-length", type=int, default=100_000, help="char LM sequence length")
    parser.add_argument("--lm-budget-gib", type=float, default=1 / 16, help="the stated memory budget (GiB)")
    parser.add_argument("--lm-states", type=int, default=1000, help="checkpointed_bptt memory_budget (states)")
    parser.add_argument("--lm-steps", type=int, default=100, help="outer steps of char LM training")
    parser.add_argument("--quick", action="store_true", help="horizons 1e3, 1e4; char LM length 5,000, 2 steps")
    parser.add_argument("--out", help="also write the tables (markdown) here")
    parser.add_argument("--png", help="write the plots here (memory against the horizon; the char LM's loss curve)")
    args = parser.parse_args(argv)
    if args.quick:
        args.horizons, args.lm_length, args.lm_steps = [1_000, 10_000], 5_000, 2
    print(header(), flush=True)
    costs = measure_horizons(args.horizons)
    lm = char_lm_run(args.lm_length, args.lm_budget_gib, args.lm_states, args.lm_steps)
    if args.png:
        plot(costs, args.horizons, lm, args.png)
    text = header() + "\n\n" + horizon_table(costs, args.horizons) + "\n\n" + char_lm_table(lm)
    report(text, args.out)
    return {"costs": costs, "horizons": args.horizons, "lm": lm}


if __name__ == "__main__":
    main()
