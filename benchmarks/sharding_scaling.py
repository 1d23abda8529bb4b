"""Throughput of ``unroll.shard(unroll.pes(...), mesh)`` against the number of devices.

What is measured
----------------
*Inner steps x trajectories per second* of pes on the task of
``benchmarks/pes_throughput.py`` (SGD with momentum on linear regression, horizon
1000, truncation 10, sigma 0.1), for a **fixed total number of trajectories**
``num_workers * num_particles`` (8 staggered workers; the rest are particles), with
the workers split over meshes of 1, 2, 4 and 8 devices:
``unroll.shard(est, Mesh(devices[:d], ("d",)))``. Each timed block is ``windows``
windows inside one jit-compiled ``lax.scan`` (pes at its best, as in
``pes_throughput``); the plain unsharded estimator is timed too, as the row
"unsharded". All configurations are compiled and warmed up first, then timed in
interleaved rounds (every configuration once per round, the order reversed every
other round) so that all see the same load; throughputs are medians over rounds and
the ratios are to the 1-device mesh. The quartiles of the per-round ratios are a
noise gauge.

On a CPU the devices are ``--xla_force_host_platform_device_count`` virtual devices
of the host: they share its cores, so the speedup is bounded by the number of cores
(and by how many of them XLA already uses for one device); on accelerators pass
real devices.

Run ``python -m benchmarks.sharding_scaling`` (``--quick`` for a smoke run). On a CPU
host with fewer devices than asked for, the measurement runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=<max devices>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

import unroll
from benchmarks.cli import fill_defaults, positive_int
from benchmarks.pes_throughput import (
    HORIZON,
    SIGMA,
    TRUNCATION,
    initial_theta,
    regression_system,
)
from benchmarks.report import report

ROOT = Path(__file__).resolve().parents[1]
DEVICE_FLAG = "--xla_force_host_platform_device_count"
NUM_WORKERS = 8
FULL = {"devices": [1, 2, 4, 8], "trajectories": 256, "windows": 100, "repeats": 7}
QUICK = {"devices": [1, 2, 4, 8], "trajectories": 64, "windows": 10, "repeats": 3}

PyTree = Any


class Row(NamedTuple):
    devices: int | None  # None: the unsharded estimator
    steps_per_s: float
    ratio: float  # to the smallest mesh (1 device by default)
    ratio_iqr: tuple[float, float]
    compile_s: float


def scan_of_windows(est: unroll.Estimator, theta: PyTree, windows: int, key: jax.Array):
    """The jitted ``state -> state`` of ``windows`` consecutive windows, its initial state
    and its compile time (lower + compile, seconds)."""
    init_key, window_key = jax.random.split(key)
    state = jax.block_until_ready(jax.jit(est.init)(theta, init_key))
    window_keys = jax.random.split(window_key, windows)

    def advance(state):
        def body(state, window_key):
            grad, state, _ = est.estimate(theta, state, window_key)
            return state, grad

        state, grads = jax.lax.scan(body, state, window_keys)
        return state, jax.tree_util.tree_map(lambda g: g[-1], grads)

    start = time.perf_counter()
    compiled = jax.jit(advance).lower(state).compile()
    return compiled, state, time.perf_counter() - start


def measure(device_counts: Sequence[int], trajectories: int, windows: int, repeats: int, seed: int = 0) -> list[Row]:
    """Times pes at every device count (and unsharded) in interleaved rounds."""
    system, theta = regression_system(), initial_theta()
    est = unroll.pes(
        system, truncation=TRUNCATION, sigma=SIGMA, num_particles=trajectories // NUM_WORKERS, num_workers=NUM_WORKERS
    )
    configs: list[int | None] = [None, *device_counts]
    loops, compile_s = {}, {}
    for devices in configs:
        sharded = est if devices is None else unroll.shard(est, Mesh(np.array(jax.devices()[:devices]), ("d",)))
        compiled, state, compile_s[devices] = scan_of_windows(sharded, theta, windows, jax.random.PRNGKey(seed))
        state = jax.block_until_ready(compiled(state))[0]  # warm-up
        loops[devices] = [compiled, state]
    times: dict[int | None, list[float]] = {devices: [] for devices in configs}
    for repeat in range(repeats):
        for devices in configs if repeat % 2 == 0 else configs[::-1]:
            compiled, state = loops[devices]
            start = time.perf_counter()
            state = jax.block_until_ready(compiled(state))[0]
            times[devices].append(time.perf_counter() - start)
            loops[devices][1] = state
    steps = windows * trajectories * TRUNCATION
    base = times[min(device_counts)]
    rows = []
    for devices in configs:
        per_round = [b / t for b, t in zip(base, times[devices])]
        rate = steps / statistics.median(times[devices])
        rows.append(
            Row(devices, rate, rate * statistics.median(base) / steps, quartiles(per_round), compile_s[devices])
        )
    return rows


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """First and third quartiles (the value itself for a single one)."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def markdown_table(rows: Sequence[Row], trajectories: int) -> str:
    """One row per mesh size (and the unsharded estimator): throughput, its ratio to the
    smallest mesh's, the ideal ratio, efficiency, the per-round ratio quartiles, compile s."""
    base = min(r.devices for r in rows if r.devices is not None)
    columns = (
        "devices",
        "trajectories per device",
        "pes steps/s",
        f"ratio to {base} device{'s' if base > 1 else ''}",
        "ideal",
        "efficiency",
        "per-round ratio IQR",
        "compile s",
    )
    lines = ["| " + " | ".join(columns) + " |", "|---|---:|---:|---:|---:|---:|:---:|---:|"]
    for r in rows:
        name = "unsharded (plain pes)" if r.devices is None else str(r.devices)
        per_device = trajectories // (r.devices or 1)
        ideal = (r.devices or base) / base
        lines.append(
            f"| {name} | {per_device} | {r.steps_per_s:,.0f} | {r.ratio:.2f} | {ideal:g} | {r.ratio / ideal:.2f} "
            f"| {r.ratio_iqr[0]:.2f}-{r.ratio_iqr[1]:.2f} | {r.compile_s:.2f} |"
        )
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    device = jax.devices()[0]
    return (
        f"unroll.shard(pes) scaling: linear-regression SGD+momentum tuning (pes_throughput's task), horizon={HORIZON}, "
        f"truncation={TRUNCATION}, sigma={SIGMA}; {args.trajectories} trajectories in all ({NUM_WORKERS} workers x "
        f"{args.trajectories // NUM_WORKERS} particles, workers split over the devices), {args.windows} windows per "
        f"timed block, {args.repeats} rounds\n"
        f"jax {jax.__version__}, {jax.device_count()} {device.platform} devices ({device.device_kind}), "
        f"host: {platform.machine()} with {os.cpu_count()} cores, "
        f"{platform.system()} {platform.release()}, python {platform.python_version()}, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n"
        f"steps/s = inner steps x trajectories per second (median over rounds); ratio = steps/s over the "
        f"{min(args.devices)}-device mesh's; efficiency = ratio / ideal ratio"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The CLI; flags given explicitly win over ``--quick``'s settings."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--devices",
        type=positive_int,
        nargs="+",
        help=f"mesh sizes, each dividing {NUM_WORKERS} (default: {FULL['devices']})",
    )
    parser.add_argument(
        "--trajectories",
        type=positive_int,
        help=f"total trajectories, a multiple of {2 * NUM_WORKERS} (default: {FULL['trajectories']})",
    )
    parser.add_argument("--windows", type=positive_int, help=f"windows per timed block (default: {FULL['windows']})")
    parser.add_argument("--repeats", type=positive_int, help=f"timed rounds (default: {FULL['repeats']})")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK}")
    parser.add_argument("--out", type=str, default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    fill_defaults(args, FULL, QUICK)
    bad = [d for d in args.devices if NUM_WORKERS % d]
    if bad:
        parser.error(f"--devices {bad}: each must divide the {NUM_WORKERS} workers (1, 2, 4 or 8).")
    if args.trajectories % (2 * NUM_WORKERS):
        parser.error(
            f"--trajectories {args.trajectories}: use a multiple of {2 * NUM_WORKERS} "
            f"({NUM_WORKERS} workers x an even number of antithetic particles)."
        )
    return args


def with_host_devices(count: int) -> dict:
    """This environment with ``count`` forced host devices in ``XLA_FLAGS``."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_FLAG}={count}"])
    return env


def main(argv: Sequence[str] | None = None) -> list[Row] | None:
    args = parse_args(argv)
    needed = max(args.devices)
    if jax.device_count() < needed:
        if jax.default_backend() != "cpu":
            raise SystemExit(f"--devices {args.devices} needs {needed} devices; this host has {jax.device_count()}.")
        argv = list(sys.argv[1:] if argv is None else argv)
        command = [sys.executable, "-m", "benchmarks.sharding_scaling", *argv]
        print(f"(re-running with {needed} forced host devices: {' '.join(command)})", flush=True)
        subprocess.run(command, env=with_host_devices(needed), cwd=ROOT, check=True)
        return None
    print(header(args), flush=True)
    rows = measure(args.devices, args.trajectories, args.windows, args.repeats)
    table = markdown_table(rows, args.trajectories)
    report(table, args.out, header(args))
    return rows


if __name__ == "__main__":
    if DEVICE_FLAG not in os.environ.get("XLA_FLAGS", ""):  # before the backend starts
        os.environ["XLA_FLAGS"] = with_host_devices(max(FULL["devices"]))["XLA_FLAGS"]
    main()
