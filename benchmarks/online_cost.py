"""Cost of the online estimators relative to truncated BPTT, as the hidden size grows.

What is measured
----------------
*Wall-clock time per window* (``truncation`` inner steps of each of ``num_workers``
workers) of the jit-compiled ``estimate`` of

* **tbptt**: ``unroll.truncated_bptt(system, truncation=10, num_workers=4)``, the baseline;
* **rtrl**: ``unroll.rtrl(system, truncation=10, num_workers=4)``;
* **snap**: ``unroll.snap(system, truncation=10, num_workers=4, order=1)``;
* **uoro**: ``unroll.uoro(system, truncation=10, num_workers=4)``;
* **dni**: ``unroll.dni(system, truncation=10, num_workers=4)`` (default linear synthesizer),

all on the same task, same truncation, same workers, at hidden sizes 16 ... 256. The
table gives tbptt's milliseconds per window (and microseconds per inner step, a window
being ``num_workers * truncation = 40`` steps) and, for the others, the ratio of their
median time per window to tbptt's, measured in the same run. A second table gives every
estimator's ms per window and the compile time of its jitted ``estimate``
(lower + compile, seconds).

How: each estimator is built, ``init`` run (jitted), ``estimate`` compiled and warmed up
(two windows); the fastest of three single warm windows sets its block length (windows per timed block,
so that a block lasts about ``--block-s`` seconds). Then the estimators are timed in
interleaved blocks (tbptt, rtrl, ..., dni, then the reverse order, ...): a block calls
the compiled ``estimate`` once per window from Python, threading the estimator state,
and ends in ``block_until_ready``. Time per window is the median over blocks of block
time / windows; ratios are medians over tbptt's; the bracket after a ratio is the
interquartile range of the ratios of adjacent blocks (a noise gauge). Per-window Python
dispatch (tens of microseconds) is included, which matters only for the smallest sizes.

Skips. RTRL and SnAp carry the influence ``d h / d theta`` (``n x p``, ``p = n^2 + n m + 2n``):
per step ``n`` vjps give ``dh'/dh`` and ``dh'/dtheta``, and one ``[n, n] @ [n, p]`` product
updates the influence, so time grows like ``n^2 p`` (``O(n^4)``, RTRL's classic cost) and
memory like ``n p``. Before compiling, each (estimator, size) gets a quick estimate of its
memory and its time per window; one over ``--max-gb`` (default 2 GB) or
``--max-window-s`` (default 5 s) is not run and its cell reads "skipped (reason)". The
RTRL/SnAp model: memory ``(3 W + 3) n p * 4 B``, time ``W K 2 n^2 p / (2e10 flop/s)``.

On this dense RNN every parameter of ``W`` reaches every unit within two steps, so
``rtrl`` and ``snap`` (order 1, whose next step already touches every unit) keep the
dense influence (``sparse=None`` picks it; see ``unroll.estimators.rtrl.influence_pattern``).

Diagonal recurrence: fast path vs general path
----------------------------------------------
A second table times ``rtrl`` on an LRU-style complex diagonal linear recurrence
(``s' = lambda * s + B x_t``, ``lambda = exp(-exp(nu) + i phase)``, loss
``(Re(C . s') - y_t)^2 / 2``, ``theta = {nu, phase: n; B_re, B_im: n x m; C_re, C_im: n}``,
``p = n (4 + 2m)``), with the compressed influence (``sparse=True``, the fast path: the
columns colour into ``2 + 2m = 18`` groups whatever ``n``, so a step is 18 jvps and
``[18, 2n]`` numbers) and with the dense one (``sparse=False``, the general path:
``[2n, p]`` numbers, ``2n`` vjps and a ``[2n, 2n] @ [2n, p]`` product per step), against
truncated BPTT on the same system; the last column is general / fast.

Task: a vanilla tanh RNN, hidden size ``n``, input size ``m = 8``,
``theta = {W: n x n, U: n x m, b: n, readout: n}``,

    h' = tanh(W h + U x_t + b);   loss_t = (readout . h' - y_t)^2 / 2

with inputs ``x_t ~ N(0, I_m)`` and targets ``y_t = sin(2 pi t / 25) + 0.1 N(0, 1)`` fixed
(from a fixed key) for ``t < horizon = 100``; each episode starts at
``h_0 ~ 0.1 N(0, I_n)`` from its episode key. ``W`` is ``0.9 N(0, 1) / sqrt(n)``, ``U``
``N(0, 1) / sqrt(m)``, ``b = 0``, ``readout`` ``N(0, 1) / sqrt(n)``; float32.

Run ``python -m benchmarks.online_cost`` (``--quick`` for sizes 16, 32 only; ``--no-diagonal``
skips the second table).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import unroll
from benchmarks.cli import fill_defaults, positive_int
from benchmarks.report import report
from unroll import registry

PyTree = Any

HORIZON = 100
TRUNCATION = 10
NUM_WORKERS = 4
INPUT_SIZE = 8
DATA_SEED = 0
ESTIMATORS = ("tbptt", "rtrl", "snap", "uoro", "dni")
BASELINE = "tbptt"

# RTRL / SnAp cost model (see the module doc), for a 2-core CPU.
STREAM_BYTES_PER_S = 5e9
FLOPS_PER_S = 2e10


# --------------------------------------------------------------------------- task


def sequence_data(input_size: int, horizon: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """Fixed inputs ``x_t ~ N(0, I_m)`` and targets ``y_t = sin(2 pi t / 25) + 0.1 N(0, 1)``."""
    x_key, y_key = jax.random.split(jax.random.PRNGKey(seed))
    xs = jax.random.normal(x_key, (horizon, input_size), jnp.float32)
    ts = jnp.arange(horizon, dtype=jnp.float32)
    return xs, jnp.sin(2 * math.pi * ts / 25) + 0.1 * jax.random.normal(y_key, (horizon,), jnp.float32)


def rnn_system(
    hidden: int, input_size: int = INPUT_SIZE, horizon: int = HORIZON, seed: int = DATA_SEED
) -> unroll.System:
    """The vanilla tanh RNN with a per-step readout loss (see the module doc)."""
    xs, ys = sequence_data(input_size, horizon, seed)

    def init(theta: PyTree, key: jax.Array) -> jax.Array:
        del theta
        return 0.1 * jax.random.normal(key, (hidden,), jnp.float32)

    def step(theta: PyTree, h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = jnp.tanh(theta["W"] @ h + theta["U"] @ xs[t] + theta["b"])
        return h, 0.5 * (theta["readout"] @ h - ys[t]) ** 2

    return unroll.System(init, step, horizon)


def initial_theta(hidden: int, input_size: int = INPUT_SIZE, seed: int = DATA_SEED) -> dict[str, jax.Array]:
    w_key, u_key, r_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 1), 3)
    return {
        "W": 0.9 * jax.random.normal(w_key, (hidden, hidden), jnp.float32) / math.sqrt(hidden),
        "U": jax.random.normal(u_key, (hidden, input_size), jnp.float32) / math.sqrt(input_size),
        "b": jnp.zeros(hidden, jnp.float32),
        "readout": jax.random.normal(r_key, (hidden,), jnp.float32) / math.sqrt(hidden),
    }


def num_params(hidden: int, input_size: int = INPUT_SIZE) -> int:
    return hidden * hidden + hidden * input_size + 2 * hidden


def diagonal_system(
    hidden: int, input_size: int = INPUT_SIZE, horizon: int = HORIZON, seed: int = DATA_SEED
) -> unroll.System:
    """The LRU-style complex diagonal linear recurrence (see the module doc)."""
    xs, ys = sequence_data(input_size, horizon, seed)

    def init(theta: PyTree, key: jax.Array) -> jax.Array:
        del theta
        return jax.lax.complex(*(0.1 * jax.random.normal(key, (2, hidden), jnp.float32)))

    def step(theta: PyTree, s: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        lam = jnp.exp(jax.lax.complex(-jnp.exp(theta["nu"]), theta["phase"]))
        s = lam * s + jax.lax.complex(theta["B_re"] @ xs[t], theta["B_im"] @ xs[t])
        out = jnp.real(jax.lax.complex(theta["C_re"], theta["C_im"]) @ s)
        return s, 0.5 * (out - ys[t]) ** 2

    return unroll.System(init, step, horizon)


def diagonal_theta(hidden: int, input_size: int = INPUT_SIZE, seed: int = DATA_SEED) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), 2), 4)
    return {
        "nu": jnp.log(-jnp.log(jnp.linspace(0.9, 0.999, hidden, dtype=jnp.float32))),  # |lambda| in [0.9, 0.999]
        "phase": jnp.linspace(0.0, math.pi, hidden, dtype=jnp.float32),
        "B_re": jax.random.normal(keys[0], (hidden, input_size), jnp.float32) / math.sqrt(input_size),
        "B_im": jax.random.normal(keys[1], (hidden, input_size), jnp.float32) / math.sqrt(input_size),
        "C_re": jax.random.normal(keys[2], (hidden,), jnp.float32) / math.sqrt(2 * hidden),
        "C_im": jax.random.normal(keys[3], (hidden,), jnp.float32) / math.sqrt(2 * hidden),
    }


def diagonal_params(hidden: int, input_size: int = INPUT_SIZE) -> int:
    return hidden * (4 + 2 * input_size)


class Task(NamedTuple):
    """A benchmarked system: its builders, ``p(n)``, the real state size ``N(n)`` and estimators."""

    system: Any
    theta: Any
    num_params: Any
    state_size: Any
    estimators: tuple[str, ...]


TASKS = {
    "rnn": Task(rnn_system, initial_theta, num_params, lambda n: n, ("tbptt", "rtrl", "snap", "uoro", "dni")),
    "diagonal": Task(
        diagonal_system, diagonal_theta, diagonal_params, lambda n: 2 * n, ("tbptt", "rtrl-fast", "rtrl-general")
    ),
}


def build(name: str, system: unroll.System) -> unroll.Estimator:
    """A registered estimator (``unroll.registry``) with this benchmark's window and workers;
    ``rtrl-fast`` / ``rtrl-general`` are rtrl with ``sparse=True`` / ``False``."""
    settings = dict(truncation=TRUNCATION, num_workers=NUM_WORKERS)
    layouts = {"rtrl-fast": True, "rtrl-general": False}
    if name in layouts:
        return registry.build("rtrl", system, **settings, sparse=layouts[name])
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; expected one of {ESTIMATORS}")
    return registry.build(name, system, **settings)


# --------------------------------------------------------------------- estimates


class Estimate(NamedTuple):
    bytes: float
    window_s: float


def cost_estimate(name: str, hidden: int, task: Task = TASKS["rnn"]) -> Estimate:
    """A quick (pre-compile) estimate of an estimator's peak temporaries and time per window.

    Dense RTRL/SnAp: a few copies of the ``W x N x p`` influence and of ``ds'/dtheta``; time
    is the ``[N, N] @ [N, p]`` influence update per step. The others (the compressed
    influence included) are ``O(W K p)`` and cheap."""
    n, p, steps = task.state_size(hidden), task.num_params(hidden), NUM_WORKERS * TRUNCATION
    if name in ("rtrl", "snap", "rtrl-general"):
        memory = (3 * NUM_WORKERS + 3) * n * p * 4
        return Estimate(memory, steps * 2 * n * n * p / FLOPS_PER_S)
    memory = 3 * (p + n * n) * 4 + steps * n * 4 * 4  # theta, grads, synthesizer, saved states
    return Estimate(memory, steps * 10 * p * 4 / STREAM_BYTES_PER_S)


def skip_reason(name: str, hidden: int, max_bytes: float, max_window_s: float, task: Task = TASKS["rnn"]) -> str | None:
    est = cost_estimate(name, hidden, task)
    reasons = []
    if est.bytes > max_bytes:
        reasons.append(f"est. {est.bytes / 1e9:.1f} GB > {max_bytes / 1e9:g} GB")
    if est.window_s > max_window_s:
        reasons.append(f"est. {est.window_s:.0f} s/window > {max_window_s:g} s")
    return "; ".join(reasons) or None


# --------------------------------------------------------------------- measuring


class Runner:
    """One estimator's compiled ``estimate``, its threaded state and its timed blocks."""

    def __init__(self, name: str, system: unroll.System, theta: PyTree, seed: int = 0):
        self.name, self.theta = name, theta
        est = build(name, system)
        init_key, window_key = jax.random.split(jax.random.PRNGKey(seed))
        self.state = jax.block_until_ready(jax.jit(est.init)(theta, init_key))
        self.key = window_key
        start = time.perf_counter()
        self.estimate = jax.jit(est.estimate).lower(theta, self.state, window_key).compile()
        self.compile_s = time.perf_counter() - start
        self.windows = 1
        self.block_s: list[float] = []

    def run(self, windows: int) -> float:
        """``windows`` Python calls of the compiled ``estimate``, state threaded; seconds."""
        start = time.perf_counter()
        grad = None
        for _ in range(windows):
            grad, self.state, _ = self.estimate(self.theta, self.state, self.key)
        jax.block_until_ready((grad, self.state))
        return time.perf_counter() - start

    def timed(self) -> None:
        self.block_s.append(self.run(self.windows) / self.windows)

    @property
    def ms_per_window(self) -> float:
        return 1e3 * statistics.median(self.block_s)


class Row(NamedTuple):
    hidden: int
    ms: dict[str, float]  # median ms per window, measured estimators only
    ratio: dict[str, float]  # over the baseline
    ratio_iqr: dict[str, tuple[float, float]]
    compile_s: dict[str, float]
    windows: dict[str, int]  # windows per timed block
    skipped: dict[str, str]  # estimator -> reason


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def measure(
    hidden: int, args: argparse.Namespace, task: Task = TASKS["rnn"], names: Sequence[str] | None = None
) -> Row:
    system, theta = task.system(hidden), task.theta(hidden)
    skipped, runners = {}, []
    for name in args.estimators if names is None else names:
        reason = skip_reason(name, hidden, args.max_gb * 1e9, args.max_window_s, task)
        if reason is not None:
            skipped[name] = reason
            print(f"    {name:12s} skipped ({reason})", flush=True)
            continue
        runner = Runner(name, system, theta)
        runner.run(2)  # warm-up
        warm = min(runner.run(1) for _ in range(3))
        runner.windows = max(1, min(args.max_windows, round(args.block_s / max(warm, 1e-9))))
        print(
            f"    {name:12s} compile {runner.compile_s:.2f} s, warm window {1e3 * warm:.2f} ms, "
            f"{runner.windows} windows per block",
            flush=True,
        )
        runners.append(runner)
    for repeat in range(args.repeats):
        for runner in runners if repeat % 2 == 0 else runners[::-1]:
            runner.timed()
    by_name = {r.name: r for r in runners}
    base = by_name.get(BASELINE)
    ms = {r.name: r.ms_per_window for r in runners}
    ratio, iqr = {}, {}
    if base is not None:
        for r in runners:
            ratio[r.name] = r.ms_per_window / base.ms_per_window
            iqr[r.name] = quartiles([a / b for a, b in zip(r.block_s, base.block_s)])
    return Row(
        hidden, ms, ratio, iqr, {r.name: r.compile_s for r in runners}, {r.name: r.windows for r in runners}, skipped
    )


# ------------------------------------------------------------------------ output


NOTE = (
    "Note: on this dense RNN rtrl and snap (order 1) keep the dense n x p influence (every parameter of W "
    "reaches every unit within two steps, so no compression pays); they update it with one [n, n] @ [n, p] "
    "product per step (time ~ n^2 p ~ n^4, memory ~ n p)."
)


def diagonal_table(rows: Sequence[Row]) -> str:
    """Fast path vs general path of rtrl on the diagonal recurrence, both against tbptt."""
    lines = [
        "| hidden n | params p | tbptt ms/window | rtrl fast path ms/window | rtrl general path ms/window | "
        "fast / tbptt | general / tbptt | general / fast |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        cell = lambda name: f"{row.ms[name]:.3f}" if name in row.ms else f"skipped ({row.skipped.get(name, '-')})"
        ratio = lambda name: f"{row.ratio[name]:.2f}x" if name in row.ratio else "-"
        both = "rtrl-fast" in row.ms and "rtrl-general" in row.ms
        lines.append(
            f"| {row.hidden} | {diagonal_params(row.hidden):,} | {cell('tbptt')} | {cell('rtrl-fast')} | "
            f"{cell('rtrl-general')} | {ratio('rtrl-fast')} | {ratio('rtrl-general')} | "
            + (f"{row.ms['rtrl-general'] / row.ms['rtrl-fast']:.1f}x |" if both else "- |")
        )
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row], names: Sequence[str]) -> str:
    """Ratios table: hidden size, p, tbptt ms/window and us/step, then each estimator's ratio."""
    others = [n for n in names if n != BASELINE]
    steps = NUM_WORKERS * TRUNCATION
    lines = [
        "| hidden n | params p | tbptt ms/window | tbptt us/step | "
        + " | ".join(f"{n} / tbptt [block IQR]" for n in others)
        + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(others),
    ]
    for row in rows:
        base = row.ms.get(BASELINE)
        cells = [str(row.hidden), f"{num_params(row.hidden):,}"]
        cells += [f"{base:.3f}", f"{1e3 * base / steps:.1f}"] if base is not None else ["-", "-"]
        for name in others:
            if name in row.skipped:
                cells.append(f"skipped ({row.skipped[name]})")
            elif name in row.ratio:
                q1, q3 = row.ratio_iqr[name]
                cells.append(f"{row.ratio[name]:.2f}x [{q1:.2f}-{q3:.2f}]")
            else:
                cells.append("-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detail_table(rows: Sequence[Row], names: Sequence[str]) -> str:
    """Every estimator's ms per window, windows per block and compile seconds."""
    lines = [
        "| hidden n | " + " | ".join(f"{n} ms/window (windows/block) | {n} compile s" for n in names) + " |",
        "|---:|" + "---:|---:|" * len(names),
    ]
    for row in rows:
        cells = [str(row.hidden)]
        for name in names:
            if name in row.ms:
                cells += [f"{row.ms[name]:.3f} ({row.windows[name]})", f"{row.compile_s[name]:.2f}"]
            else:
                cells += ["skipped" if name in row.skipped else "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


FULL = {"sizes": [16, 32, 64, 128, 256], "repeats": 7, "block_s": 0.3}
QUICK = {"sizes": [16, 32], "repeats": 3, "block_s": 0.1}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The CLI; flags given explicitly win over ``--quick``'s settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", help=f"hidden sizes (default: {FULL['sizes']})")
    parser.add_argument(
        "--estimators",
        nargs="+",
        choices=ESTIMATORS,
        default=list(ESTIMATORS),
        help=f"estimators to time (default: all; ratios need {BASELINE})",
    )
    parser.add_argument("--repeats", type=positive_int, help=f"timed blocks per estimator (default: {FULL['repeats']})")
    parser.add_argument(
        "--block-s",
        type=positive_float,
        help=f"target seconds per timed block, sets windows per block (default: {FULL['block_s']})",
    )
    parser.add_argument("--max-windows", type=positive_int, default=100, help="cap on windows per block (default: 100)")
    parser.add_argument(
        "--max-gb",
        type=positive_float,
        default=2.0,
        help="skip an (estimator, size) whose estimated memory exceeds this (default: 2 GB)",
    )
    parser.add_argument(
        "--max-window-s",
        type=positive_float,
        default=5.0,
        help="skip an (estimator, size) whose estimated time per window exceeds this (default: 5 s)",
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument(
        "--no-diagonal", action="store_true", help="skip the diagonal recurrence's fast path vs general path table"
    )
    parser.add_argument("--out", type=str, default=None, help="also write the tables (markdown) to this file")
    args = parser.parse_args(argv)
    fill_defaults(args, FULL, QUICK)
    if BASELINE not in args.estimators:
        args.estimators = [BASELINE] + list(args.estimators)
    args.estimators = [n for n in ESTIMATORS if n in args.estimators]
    return args


def header(args: argparse.Namespace) -> str:
    device = jax.devices()[0]
    return (
        f"online estimators vs truncated BPTT: vanilla tanh RNN (input size {INPUT_SIZE}, per-step readout loss), "
        f"horizon={HORIZON}, truncation={TRUNCATION}, num_workers={NUM_WORKERS} "
        f"({NUM_WORKERS * TRUNCATION} inner steps per window), float32, repeats={args.repeats}\n"
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), python {platform.python_version()}\n"
        "ms/window = median over interleaved blocks of the compiled estimate called once per window; "
        "ratio = estimator / tbptt of those medians (same run); block IQR = quartiles of the ratios of "
        "adjacent blocks; snap is order=1, dni has the default linear synthesizer"
    )


def main(argv: Sequence[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    print(header(args), flush=True)
    rows = []
    for hidden in args.sizes:
        print(f"  hidden {hidden} (p = {num_params(hidden):,})", flush=True)
        rows.append(measure(hidden, args))
    text = markdown_table(rows, args.estimators) + "\n\n" + NOTE + "\n\n" + detail_table(rows, args.estimators)
    if not args.no_diagonal:
        print("diagonal recurrence (LRU-style, complex): rtrl fast path vs general path", flush=True)
        diagonal_rows = []
        for hidden in args.sizes:
            print(f"  hidden {hidden} (p = {diagonal_params(hidden):,})", flush=True)
            diagonal_rows.append(measure(hidden, args, TASKS["diagonal"], TASKS["diagonal"].estimators))
        text += (
            "\n\nDiagonal recurrence (LRU-style complex, see the module doc): rtrl's compressed influence "
            "(sparse=True, the fast path) vs the dense one (sparse=False), same run\n\n" + diagonal_table(diagonal_rows)
        )
    report(text, args.out, header(args))
    return rows


if __name__ == "__main__":
    main()
