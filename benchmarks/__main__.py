"""Runs every benchmark and writes one summary table, each benchmark's tables and the plots.

    python -m benchmarks                      # all, into benchmarks/results/ + benchmarks/RESULTS.md
    python -m benchmarks --quick --out /tmp/b # a smoke run into /tmp/b
    python -m benchmarks --only pes_throughput train_overhead

Every figure is a ratio measured within one run (ours against a floor or a peer, timed in
interleaved blocks), so a shared, noisy machine moves both sides alike. The summary table
lists each benchmark's headline figures against its goal; the sections below it hold the
full tables. Machine, versions and the command are recorded at the top.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

Line = tuple[str, str, str, str]  # what, measured, goal, met


class Benchmark(NamedTuple):
    title: str
    png: bool  # the module's main takes --png
    summary: Callable[[Any], list[Line]]  # of main's result, or with from_file, of the markdown it wrote
    from_file: bool = False


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _pes_summary(rows) -> list[Line]:
    lines = []
    for r in rows:
        lines.append(
            (
                f"pes / forward floor, {r.layout.total} particles (staggered resets)",
                f"{r.ratio:.3f}",
                ">= 0.95",
                _met(r.ratio >= 0.95),
            )
        )
        if r.evosax_steps_per_s is None:
            lines.append((f"pes / evosax PES, {r.layout.total} particles", "evosax not installed", ">= 1", "-"))
        else:
            ratio = r.pes_steps_per_s / r.evosax_steps_per_s
            lines.append(
                (
                    f"pes / evosax PES, {r.layout.total} particles (evosax / floor "
                    f"{r.evosax_steps_per_s / r.floor_steps_per_s:.3f})",
                    f"{ratio:.3f}",
                    ">= 1",
                    _met(ratio >= 1),
                )
            )
    return lines


def _overhead_summary(rows) -> list[Line]:
    # (a negative overhead is timing noise: the two loops differ by less than it)
    return [
        (
            f"unroll.train host overhead per outer step, {r.case}",
            f"{r.overhead_ms:.3f} ms",
            "< 1 ms",
            _met(r.overhead_ms < 1),
        )
        for r in rows
    ]


def _checkpoint_summary(result) -> list[Line]:
    from benchmarks.checkpoint_memory import (
        GOAL_FULL_BUDGET,
        GOAL_FULL_TIME,
        GOAL_HORIZONS,
        HORIZON,
        equinox_ratios,
        full_goal,
        nested_goal,
        reference,
        sweep_goal,
    )

    rows, planned = result

    base, good = reference(rows, HORIZON), sweep_goal(rows)
    best = min(good, key=lambda r: r.seconds) if good else None
    lines = [
        (
            f"checkpointed_bptt (T = {HORIZON:,}): memory budgets saving >= 95% at <= 1.25x full_bptt's time",
            (", ".join(str(r.budget) for r in good) or "none")
            + (f" (fastest: {best.budget}, {best.seconds / base.seconds:.2f}x)" if best else ""),
            "some budget",
            _met(bool(good)),
        )
    ]
    for horizon in GOAL_HORIZONS:
        ratios = equinox_ratios(rows, horizon)
        ran = any(r.horizon == horizon for r in rows)
        lines.append(
            (
                f"checkpointed_bptt / equinox time at equal checkpoints, T = {horizon:.0e}".replace("e+0", "e"),
                ", ".join(f"{ratio:.2f} (m = {m})" for m, ratio in ratios.items())
                or ("equinox not installed" if ran else "not run"),
                "<= 1",
                _met(all(ratio <= 1 for ratio in ratios.values())) if ratios else "-",
            )
        )
    for horizon in GOAL_HORIZONS:
        peer, ours = nested_goal(rows, horizon)
        if peer is not None:
            lines.append(
                (
                    f"checkpointed_bptt / nested jax.checkpoint scans, time within their memory, T = {horizon:.0e}".replace(
                        "e+0", "e"
                    )
                    + (f" (m = {ours.budget}; memory {ours.temp_bytes / peer.temp_bytes:.2f}x)" if ours else ""),
                    f"{ours.seconds / peer.seconds:.2f}x" if ours else "no budget within their memory",
                    "<= 1",
                    _met(ours is not None and ours.seconds <= peer.seconds),
                )
            )
        ratio = full_goal(rows, horizon)
        if ratio is not None:
            lines.append(
                (
                    f"checkpointed_bptt / full_bptt time at m = {GOAL_FULL_BUDGET}, T = {horizon:.0e}".replace(
                        "e+0", "e"
                    ),
                    f"{ratio:.2f}x",
                    f"<= {GOAL_FULL_TIME:g}",
                    _met(ratio <= GOAL_FULL_TIME),
                )
            )
    for r in planned:
        if (r.horizon, r.budget) == (10**6, 100):
            lines.append(
                (
                    "checkpointing.plan(1e6, 100): the closed-form schedule (compile of the estimate at T = 1e6)",
                    f"{r.plan_seconds * 1e3:.1f} ms ({r.compile_seconds:.1f} s)",
                    "< 1 s",
                    _met(r.plan_seconds < 1),
                )
            )
    return lines


def _online_summary(rows) -> list[Line]:
    r = rows[-1]
    return [
        (f"{name} / tbptt time per window, tanh RNN hidden {r.hidden}", f"{ratio:.2f}x", "(reported)", "-")
        for name, ratio in r.ratio.items()
        if name != "tbptt"
    ]


def _memory_summary(result) -> list[Line]:
    from benchmarks.memory_horizon import ONLINE, mb

    costs, horizons, lm = result["costs"], result["horizons"], result["lm"]
    lines = []
    for name in ONLINE:
        first, last = costs[name, horizons[0]], costs[name, horizons[-1]]
        same = last.temp_bytes + last.state_bytes <= 1.01 * (first.temp_bytes + first.state_bytes)
        lines.append(
            (
                f"{name}: memory (temp + state) at T = {horizons[0]:,} and {horizons[-1]:,}",
                f"{mb(first.temp_bytes + first.state_bytes)}, {mb(last.temp_bytes + last.state_bytes)}",
                "independent of T",
                _met(same),
            )
        )
    lines.append(
        (
            f"char LM, {lm.length:,} characters: full_bptt / checkpointed_bptt ({lm.memory_budget} states) memory",
            f"{mb(lm.full_temp_bytes)} / {mb(lm.checkpointed_temp_bytes)}",
            f"full over, checkpointed within {mb(lm.budget_bytes)}",
            _met(lm.full_temp_bytes > lm.budget_bytes >= lm.checkpointed_temp_bytes),
        )
    )
    lines.append(
        (
            f"char LM, {lm.length:,} characters: validation bits/char over {lm.steps} outer steps of "
            f"checkpointed_bptt ({lm.seconds_per_step:.1f} s each)",
            f"{lm.eval_bits[0]:.2f} -> {lm.eval_bits[-1]:.2f}",
            "decreases",
            _met(lm.loss_decreased),
        )
    )
    return lines


def _sharding_summary(md_path: str) -> list[Line]:
    """From the table it wrote (it runs in a subprocess with 8 forced host devices)."""
    lines = []
    for row in open(md_path).read().splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells and cells[0].isdigit() and cells[0] != "1":
            lines.append(
                (
                    f"unroll.shard(pes), 256 trajectories on {cells[0]} devices: steps/s over 1 device",
                    f"{cells[3]}x (ideal {cells[4]})",
                    "(reported; equality with 1 device is tested)",
                    "-",
                )
            )
    return lines


def _parallel_summary(rows) -> list[Line]:
    from benchmarks.parallel_time import GOAL_CASE, GOAL_SPEEDUP

    lines = []
    for r in rows:
        if (r.cell, r.width) != GOAL_CASE[:2]:
            continue
        goal = r.horizon == GOAL_CASE[2]
        lines.append(
            (
                f"parallel_bptt / full_bptt speed, {r.cell} width {r.width}, T = {r.horizon:,} (memory par / seq)",
                f"{r.gradient_speedup:.1f}x ({r.memory_parallel / r.memory_sequential:.2f})",
                f">= {GOAL_SPEEDUP:g}x, memory <= 1" if goal else "(reported)",
                _met(r.gradient_speedup >= GOAL_SPEEDUP and r.memory_parallel <= r.memory_sequential) if goal else "-",
            )
        )
    return lines


def _exact_summary(rows) -> list[Line]:
    from benchmarks.exact_overhead import GOAL

    return [
        (
            f"{name} / jax.grad through lax.scan, {r.cell} {r.width}, T = {r.horizon:,}: CPU time (wall-clock)",
            f"{r.ratio(name):.3f} ({r.ratio(name, 'wall'):.3f})",
            f"<= {GOAL:g}" if name == "full_bptt" else "(reported)",
            _met(r.ratio(name) <= GOAL) if name == "full_bptt" else "-",
        )
        for r in rows
        for name in ("full_bptt", "truncated_bptt")
    ]


BENCHMARKS: dict[str, Benchmark] = {
    "pes_throughput": Benchmark("PES throughput: the forward floor and evosax", False, _pes_summary),
    "train_overhead": Benchmark("unroll.train: outer steps per second and host overhead", False, _overhead_summary),
    "checkpoint_memory": Benchmark(
        "checkpointed_bptt: memory and time against full_bptt, equinox and nested jax.checkpoint",
        True,
        _checkpoint_summary,
    ),
    "memory_horizon": Benchmark("Memory against the horizon", True, _memory_summary),
    "online_cost": Benchmark("Online estimators: cost per window against truncated BPTT", False, _online_summary),
    "parallel_time": Benchmark("Parallel in time: parallel_bptt against full_bptt", True, _parallel_summary),
    "exact_overhead": Benchmark(
        "Exact estimators: full_bptt and truncated_bptt(K = T) against jax.grad through lax.scan",
        False,
        _exact_summary,
    ),
    "sharding_scaling": Benchmark("Sharding: unroll.shard(pes) over several devices", False, _sharding_summary, True),
}


def machine() -> str:
    device = jax.devices()[0]
    versions = [f"jax {jax.__version__}", f"python {platform.python_version()}"]
    from benchmarks.pes_throughput import evosax_version

    versions.append(f"evosax {evosax_version() or 'not installed'}")
    return (
        f"{platform.node() or 'unknown host'}: {platform.platform()}, {os.cpu_count()} CPU cores, "
        f"{len(jax.devices())} x {device.platform} ({device.device_kind}); " + ", ".join(versions)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        help="output folder (default: benchmarks/results, summary in benchmarks/RESULTS.md, "
        "RESULTS-<platform>.md off CPU)",
    )
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--quick", action="store_true", help="smoke run: each benchmark's --quick")
    args = parser.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    platform_name = jax.devices()[0].platform
    if args.out:
        out_dir, summary_path, suffix = args.out, os.path.join(args.out, "RESULTS.md"), ""
    else:
        out_dir, suffix = os.path.join(here, "results"), f"-{platform_name}"
        summary_path = os.path.join(here, "RESULTS.md" if platform_name == "cpu" else f"RESULTS-{platform_name}.md")
    os.makedirs(out_dir, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    summary: list[Line] = []
    sections = []
    for name in names:
        bench = BENCHMARKS[name]
        module = importlib.import_module(f"benchmarks.{name}")
        md, png = os.path.join(out_dir, f"{name}{suffix}.md"), os.path.join(out_dir, f"{name}{suffix}.png")
        module_argv = ["--out", md] + (["--png", png] if bench.png else []) + (["--quick"] if args.quick else [])
        print(f"=== {name}: {bench.title}", flush=True)
        start = time.perf_counter()
        result = module.main(module_argv)
        seconds = time.perf_counter() - start
        summary += bench.summary(md if bench.from_file else result)
        rel = lambda path: os.path.relpath(path, os.path.dirname(summary_path))
        body = open(md).read().strip()
        picture = f"\n\n![{name}]({rel(png)})" if bench.png and os.path.exists(png) else ""
        shown = [os.path.relpath(a, os.path.dirname(here)) if os.path.isabs(a) else a for a in module_argv]
        sections.append(
            f"## {bench.title}\n\n`python -m benchmarks.{name} {' '.join(shown)}` ({seconds:.0f} s)\n\n{body}{picture}"
        )
    table = ["| benchmark figure | measured | goal | met? |", "|---|---:|---|:---:|"]
    table += [f"| {what} | {measured} | {goal} | {met} |" for what, measured, goal, met in summary]
    text = "\n".join(
        [
            "# Benchmark results",
            "",
            f"Made by `{command.strip()}` on {datetime.date.today().isoformat()}.",
            f"Machine: {machine()}.",
            "",
            "\n".join(table),
            "",
            "\n\n".join(sections),
            "",
        ]
    )
    with open(summary_path, "w") as f:
        f.write(text)
    print(f"wrote {summary_path}")


if __name__ == "__main__":
    main()
