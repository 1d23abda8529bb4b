"""Outer iterations per second of ``unroll.train``, and its host overhead per step.

What is measured
----------------
``unroll.train(estimator, optax.adam(1e-3), theta, key, num_steps, progress=False)``
runs one compiled outer step (estimate + optimizer update + the non-finite guard) per
Python iteration, keeping the metrics on the device. The **floor** is the same outer
step (``unroll.train_step.make_train_step``) run ``num_steps`` times inside one
jit-compiled ``lax.scan``: no Python in the loop at all. The host overhead per step is

    (train seconds in outer steps - scan seconds) / num_steps

("train seconds in outer steps" is ``history["train_time_s"]``, the loop alone; the rest
of a call, tracing, compiling and building the history, is reported apart as setup)

timed in interleaved repeats (medians), so both see the same load of a shared
machine. ``train``'s compile time (lower + compile of the outer step, AOT) is reported
from its history.

Cases: pes on the SGD-with-momentum tuning task of ``benchmarks/pes_throughput.py`` with
16 and 256 trajectories (8 workers), and truncated BPTT on the same task (8 workers):
small, realistic outer steps, where a per-step overhead would show.

Goal: host overhead **below 1 ms** per outer step.

Metric streaming (``train(..., callback=fn, callback_every=N)``): the same runs, whole
calls timed (the callback's own time is not in ``train_time_s``), with no callback, a
no-op one and ``unroll.callbacks.tensorboard`` every ``N = 10`` steps; the extra seconds
per outer step against no callback. Goal: the no-op callback costs **below 0.1 ms** per
outer step (the pipeline stall of handing the metrics to the host every N steps).

Run ``python -m benchmarks.train_overhead`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import unroll
from benchmarks.pes_throughput import (
    SIGMA,
    TRUNCATION,
    initial_theta,
    regression_system,
)
from benchmarks.report import report
from unroll import registry
from unroll.train_step import TrainState, make_train_step

GOAL_MS = 1.0
CALLBACK_EVERY = 10
CALLBACK_GOAL_MS = 0.1

CASES: dict[str, Callable[[unroll.System], unroll.Estimator]] = {
    "pes, 16 trajectories": functools.partial(
        registry.build, "pes", truncation=TRUNCATION, sigma=SIGMA, num_particles=2, num_workers=8
    ),
    "pes, 256 trajectories": functools.partial(
        registry.build, "pes", truncation=TRUNCATION, sigma=SIGMA, num_particles=32, num_workers=8
    ),
    "tbptt, 8 workers": functools.partial(registry.build, "tbptt", truncation=TRUNCATION, num_workers=8),
}


class Row(NamedTuple):
    case: str
    train_steps_per_s: float
    scan_steps_per_s: float
    overhead_ms: float
    compile_s: float
    setup_s: float  # the rest of a train call: tracing, compiling, building the history


def scan_runner(estimator: unroll.Estimator, optimizer, theta, key, num_steps: int) -> Callable[[], None]:
    """The same outer steps as ``unroll.train``, in one compiled ``lax.scan``."""
    step = make_train_step(estimator, optimizer)
    init_key, run_key = jax.random.split(key)
    zero = jnp.zeros((), jnp.int32)
    start = TrainState(theta, optimizer.init(theta), estimator.init(theta, init_key), zero, zero - 1, zero)

    @jax.jit
    def run(state):
        return jax.lax.scan(lambda s, _: step(s, jax.random.fold_in(run_key, s.step)), state, length=num_steps)

    jax.block_until_ready(run(start))  # compile
    return lambda: jax.block_until_ready(run(start))


def measure(case: str, num_steps: int, repeats: int) -> Row:
    system, theta = regression_system(), initial_theta()
    estimator, optimizer, key = CASES[case](system), optax.adam(1e-3), jax.random.PRNGKey(0)
    scan = scan_runner(estimator, optimizer, theta, key, num_steps)
    train_s, scan_s, compile_s = [], [], []

    setup_s = []

    def train_once():
        start = time.perf_counter()
        _, history = unroll.train(estimator, optimizer, theta, key, num_steps, progress=False)
        total = time.perf_counter() - start
        compile_s.append(float(history["compile_s"]))
        setup_s.append(total - float(history["train_time_s"]))
        return float(history["train_time_s"])  # the loop over outer steps, as train measures it

    train_once()  # warm-up: tracing caches
    for repeat in range(repeats):
        for which in ("train", "scan") if repeat % 2 == 0 else ("scan", "train"):
            if which == "train":
                train_s.append(train_once())
            else:
                start = time.perf_counter()
                scan()
                scan_s.append(time.perf_counter() - start)
    train_med, scan_med = statistics.median(train_s), statistics.median(scan_s)
    return Row(
        case,
        num_steps / train_med,
        num_steps / scan_med,
        1e3 * (train_med - scan_med) / num_steps,
        statistics.median(compile_s),
        statistics.median(setup_s),
    )


class CallbackRow(NamedTuple):
    case: str
    plain_s: float  # whole train call, no callback
    noop_ms: float  # extra milliseconds per outer step with a no-op callback
    tensorboard_ms: float  # ... with unroll.callbacks.tensorboard


def measure_callbacks(case: str, num_steps: int, repeats: int, logdir: str) -> CallbackRow:
    """Whole ``train`` calls with no callback, a no-op one and the TensorBoard writer, interleaved (medians)."""
    system, theta = regression_system(), initial_theta()
    estimator, optimizer, key = CASES[case](system), optax.adam(1e-3), jax.random.PRNGKey(0)
    callbacks = {
        "plain": lambda: None,
        "noop": lambda: lambda step, metrics: None,
        "tensorboard": lambda: unroll.callbacks.tensorboard(os.path.join(logdir, f"run{time.perf_counter_ns()}")),
    }
    seconds: dict[str, list[float]] = {name: [] for name in callbacks}

    def once(name: str) -> float:
        callback = callbacks[name]()
        start = time.perf_counter()
        unroll.train(
            estimator,
            optimizer,
            theta,
            key,
            num_steps,
            progress=False,
            callback=callback,
            callback_every=CALLBACK_EVERY,
        )
        return time.perf_counter() - start

    once("plain")  # warm-up
    for repeat in range(repeats):
        for name in list(callbacks)[:: 1 if repeat % 2 == 0 else -1]:
            seconds[name].append(once(name))
    med = {name: statistics.median(v) for name, v in seconds.items()}
    extra = lambda name: 1e3 * (med[name] - med["plain"]) / num_steps
    return CallbackRow(case, med["plain"], extra("noop"), extra("tensorboard"))


def callback_table(rows: Sequence[CallbackRow]) -> str:
    lines = [
        f"| case | train call, no callback (s) | no-op callback every {CALLBACK_EVERY}: extra per step "
        f"| goal < {CALLBACK_GOAL_MS:g} ms met? | tensorboard every {CALLBACK_EVERY}: extra per step |",
        "|---|---:|---:|:---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.plain_s:.2f} | {r.noop_ms:.3f} ms | {'yes' if r.noop_ms < CALLBACK_GOAL_MS else 'no'} "
            f"| {r.tensorboard_ms:.3f} ms |"
        )
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| case | unroll.train outer steps/s | one compiled scan steps/s | train / scan | host overhead per step "
        f"| goal < {GOAL_MS:g} ms met? | train compile s | train setup s (per call) |",
        "|---|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.case} | {r.train_steps_per_s:,.0f} | {r.scan_steps_per_s:,.0f} | "
            f"{r.train_steps_per_s / r.scan_steps_per_s:.3f} | {r.overhead_ms:.3f} ms | "
            f"{'yes' if r.overhead_ms < GOAL_MS else 'no'} | {r.compile_s:.2f} | {r.setup_s:.2f} |"
        )
    return "\n".join(lines)


def header(num_steps: int, repeats: int) -> str:
    device = jax.devices()[0]
    return (
        f"unroll.train host overhead: {num_steps} outer steps (adam) per run, {repeats} interleaved repeats, "
        f"task of benchmarks/pes_throughput.py (horizon 1000, truncation {TRUNCATION})\n"
        f"jax {jax.__version__}, {device.platform} ({device.device_kind}), python {platform.python_version()}\n"
        "overhead per step = (train's own time in outer steps, history['train_time_s'], - scan seconds) / steps, "
        "medians; setup = the rest of the call (trace, compile, history), paid once per call"
    )


def main(argv: Sequence[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="outer steps per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats (default 5)")
    parser.add_argument("--quick", action="store_true", help="200 steps, 2 repeats")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 200, 2
    print(header(args.steps, args.repeats), flush=True)
    rows = [measure(case, args.steps, args.repeats) for case in CASES]
    table = markdown_table(rows)
    with tempfile.TemporaryDirectory() as logdir:
        streaming = [measure_callbacks(case, args.steps, args.repeats, logdir) for case in CASES]
    table += "\n\nMetric streaming (whole train calls, medians):\n\n" + callback_table(streaming)
    report(table, args.out, header(args.steps, args.repeats))
    return rows


if __name__ == "__main__":
    main()
