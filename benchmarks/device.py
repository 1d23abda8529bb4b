"""One prepared run of the benchmarks where parallel-in-time evaluation pays: a GPU.

A lent GPU comes rarely and for minutes, so this is the one command to give it. It runs,
under one clock (``--budget-s``, default 420 s, under the 10 minutes a device command may
take):

1. ``parallel_time``: ``parallel_bptt`` against ``full_bptt`` on the linear layers (LRU and
   GILR, width 32 and 128), then every nonlinear solver of ``unroll.parallel.SOLVERS``
   (read at run time) against sequential evaluation on the tanh RNNs and the GRU, at
   T = 1e4, 1e5 and 1e6;
2. ``pes_throughput``: ``unroll.pes`` against the forward floor and evosax's
   ``PersistentES`` (skipped, and said so, where evosax is not installed) at 256 to 65,536
   particles;
3. ``checkpoint_memory``: ``checkpointed_bptt`` against ``full_bptt``, equinox's
   checkpointed scan and ``jax.checkpoint``-nested scans at T = 1e4 (the probe that sizes
   the rest), 1e5 and 1e6 (at 1e6 ``memory_budget`` 100 against ``full_bptt`` and the
   nested scans only: equinox at 1e6 alone would take minutes).

Each case is measured by the benchmark module's own functions and tables; this script
only chooses the cases, watches the clock and writes ``<name>-<platform>.md`` into
``--out-dir`` (``parallel_time-gpu.md``, ``pes_throughput-gpu.md``,
``checkpoint_memory-gpu.md`` on a GPU), each headed by the device, the JAX version and
the date, and rewritten after every case, so a run cut short keeps what it measured.

The clock: each part gets its weight's share of the time left when it starts (time a
part leaves unspent goes to the parts after it). The cases run in an order of priority,
each system's smaller T first; before each, its time is predicted from the same system's
smaller cases (a straight line through the last two, through the origin after one; with
none, the slowest other system's at that size), and the case is skipped, said so in the
output and the file, when the prediction exceeds what its part has left. A case with no
prediction runs if its part has any time left. A case that fails (out of memory, say) is
noted, and the larger ones of its system are skipped.

On the GPU machine (a copy of this working tree; its ``python3`` has JAX with CUDA,
optax, equinox, flax and matplotlib, but no evosax and no network). First, here:

    .venv/bin/python -m benchmarks.device --quick  # pre-flight, ~1 min: a "failed" note here fails there too
    .venv/bin/python -m benchmarks.device --stage-deps .device/site  # evosax + dotmap, pure Python

then the device tool's ``run`` with ``carry: [".device"]``, ``timeout_s: 600`` and

    bash benchmarks/device.sh

(``python3 -m benchmarks.device --out-dir "$OUT"`` with ``PYTHONPATH=.:.device/site``,
under ``timeout 560``, its log in ``$OUT/device-log.txt``); then copy the returned
``*-gpu.md`` and ``*-gpu.png`` from the reply's ``files_at`` into ``benchmarks/results/``.
That machine's JAX was 0.11.2 on Python 3.12 when last listed (KINDS.md of the device
tool), outside the range ``pyproject.toml`` declares and this project is tested with: the
log's first lines name the version, and a case that breaks on it is noted as failed.

Expected time on one H100 or H200: 420 s by construction, plus 10-20 s of imports and
JAX's start before the clock starts. Per part (estimates, not measurements: no code of
this project has run on a GPU yet; the basis is a sequential ``lax.scan`` step costing
about 8 us on a GPU, a host round trip per iteration (jax-ml/jax#2491; a 1e7-step scan took
82 s), two or three kernels a step here, and the CPU results in ``benchmarks/results``):

* parallel_time, linear layers, 170 s: a case at 1e4 5-10 s, at 1e5 10-20 s, at 1e6 about
  2 minutes (a warm-up and one round of four functions; the sequential gradient alone
  30-60 s), so width 32 to 1e5 and lru 32 at 1e6 if its prediction fits;
* parallel_time, solvers, 80 s: a case compiles 2 + 2 x len(SOLVERS) programs (10 with
  four solvers) and times 3 rounds: tanh 8 and GRU 8 at 1e4 and 1e5;
* pes_throughput, 60 s: 10-15 s a size (five compiles, 28 blocks of up to 50 windows),
  256 to 16,384 or 65,536 particles;
* checkpoint_memory, 100 s and what the others left: 1e4 about 15 s, 1e5 about 2 minutes
  if it fits (a round is some 3e6 sequential step evaluations), 1e6 skipped (minutes a
  round; said so in the file).

    python -m benchmarks.device                 # on a GPU: into benchmarks/results
    python -m benchmarks.device --quick         # smoke run (CPU, ~30 s): into a fresh temporary folder
    python -m benchmarks.device --only pes_throughput --budget-s 120 --out-dir /tmp/d

On a CPU the files are named ``-cpu`` and go to a temporary folder unless ``--out-dir``
names one, and never to ``benchmarks/results`` (whose ``-cpu`` files the benchmarks'
own full runs write) unless ``--force`` is given; a ``--quick`` run never writes there.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from benchmarks import checkpoint_memory, parallel_time, pes_throughput

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
STAGED = ("evosax", "dotmap")  # what the device image lacks, all pure Python (dotmap: evosax's need)


# ----------------------------------------------------------------------------- settings


class Settings(NamedTuple):
    """The cases of one run, each part's in the order they run."""

    linear_cases: tuple[tuple[int, str, int], ...]  # (T, cell, width), in the order they run
    solver_cases: tuple[tuple[int, str, int], ...]
    solvers: tuple[str, ...] | None  # None: unroll.parallel.SOLVERS
    timing_s: float  # parallel_time's seconds of timed rounds per case
    max_repeats: int
    particles: tuple[int, ...]
    windows: int
    pes_repeats: int
    max_block_steps: int
    checkpoint_plan: tuple[tuple[int, tuple[int, ...], frozenset], ...]  # (T, checkpoints, methods left out)
    checkpoint_repeats: int


LEAVE_OUT_EQUINOX_10 = frozenset({("equinox", 10)})  # 12x full_bptt's time on CPU: the costliest method
LEAVE_OUT_EQUINOX = frozenset({("equinox", 100)})


def by_priority(first: Sequence[tuple[int, str, int]], systems: Sequence[tuple[str, int]]) -> tuple:
    """``first`` (the cases that matter most, each after its system's smaller ones), then
    every other (T, system) of T = 1e4, 1e5, 1e6, smallest T first: when the clock runs
    short, the cases left out are the least informative."""
    rest = [(t, *system) for t in (10_000, 100_000, 1_000_000) for system in systems]
    return tuple(first) + tuple(case for case in rest if case not in first)


LINEAR_SYSTEMS = (("lru", 32), ("gilr", 32), ("lru", 128), ("gilr", 128))
# width 32 up to the goal case (lru 32 at 1e5) and its 1e6 first: a case at 1e6 costs minutes of
# sequential scans (about 8 us a step on a GPU), so few of them fit
LINEAR_FIRST = [
    (10_000, "lru", 32),
    (10_000, "gilr", 32),
    (100_000, "lru", 32),
    (100_000, "gilr", 32),
    (1_000_000, "lru", 32),
]
SOLVER_SYSTEMS = (("tanh", 8), ("gru", 8), ("tanh", 32))
# tanh 8 at 1e5 is the case parallel_time reports and explains
SOLVER_FIRST = [(10_000, "tanh", 8), (100_000, "tanh", 8), (10_000, "gru", 8), (100_000, "gru", 8)]

FULL = Settings(
    linear_cases=by_priority(LINEAR_FIRST, LINEAR_SYSTEMS),
    solver_cases=by_priority(SOLVER_FIRST, SOLVER_SYSTEMS),
    solvers=None,
    timing_s=1.0,
    max_repeats=3,
    particles=(256, 1024, 4096, 16_384, 65_536),
    windows=50,
    pes_repeats=5,
    max_block_steps=50_000_000,
    checkpoint_plan=(
        (10_000, (10, 100), frozenset()),
        (100_000, (10, 100), LEAVE_OUT_EQUINOX_10),
        (1_000_000, (100,), LEAVE_OUT_EQUINOX),
    ),
    checkpoint_repeats=2,
)
QUICK = Settings(
    linear_cases=((100, "lru", 32),),
    solver_cases=((50, "tanh", 8),),
    solvers=None,
    timing_s=0.0,
    max_repeats=1,
    particles=(16,),
    windows=2,
    pes_repeats=1,
    max_block_steps=1_000_000,
    checkpoint_plan=((50, (5,), frozenset()),),
    checkpoint_repeats=1,
)


# ------------------------------------------------------------------------------- the clock


class Clock:
    """A deadline: ``left()`` seconds until it."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


class Costs:
    """Wall seconds of the cases run so far, per series (one system at growing sizes)."""

    def __init__(self):
        self.seen: dict[Any, list[tuple[int, float | None]]] = {}

    def record(self, series: Any, size: int, seconds: float | None) -> None:
        """``seconds`` None: skipped or failed, so the larger sizes are not tried."""
        self.seen.setdefault(series, []).append((size, seconds))

    def predict(self, series: Any, size: int) -> float | None:
        """A straight line through the series' last two smaller sizes (through the origin
        after one); ``math.inf`` after a skipped or failed one. With no smaller size, the
        slowest other series' time at this size; None with neither."""
        points = [(n, s) for n, s in self.seen.get(series, []) if n < size]
        if not points:
            same = [s for other, seen in self.seen.items() if other != series for n, s in seen if n == size]
            return max((s for s in same if s is not None), default=None)
        if any(s is None for _, s in points):
            return math.inf
        if len(points) == 1:
            n, s = points[0]
            return s * size / n
        (n1, s1), (n2, s2) = points[-2:]
        return s2 + max(0.0, (s2 - s1) / (n2 - n1)) * (size - n2)


# ------------------------------------------------------------------------------ reporting


def platform_name() -> str:
    """``gpu`` for any GPU (JAX names CUDA and ROCm devices so; another name is taken as it
    is), as in the results' file names."""
    name = jax.devices()[0].platform
    return "gpu" if name in ("gpu", "cuda", "rocm") else name


def device_line() -> str:
    device = jax.devices()[0]
    return (
        f"Device: {device.device_kind} (platform {device.platform}, {jax.device_count()} device(s)); "
        f"jax {jax.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores"
    )


class Report:
    """One markdown file: a header, sections (tables) and notes (what was skipped or failed),
    rewritten whole after every change."""

    def __init__(self, path: str, title: str, command: str):
        self.path, self.title, self.command = path, title, command
        self.started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        self.sections: dict[str, str] = {}
        self.notes: list[str] = []
        self.write()

    def set(self, section: str, text: str) -> None:
        self.sections[section] = text
        self.write()

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)
        self.write()

    def write(self) -> None:
        lines = [f"# {self.title}", "", device_line(), "", f"Date: {self.started}; made by `{self.command}`."]
        for text in self.sections.values():
            lines += ["", text]
        if self.notes:
            lines += ["", "Skipped or failed in this run:", ""] + [f"* {note}" for note in self.notes]
        with open(self.path, "w") as f:
            f.write("\n".join(lines) + "\n")


class Outcome(NamedTuple):
    result: Any  # None: skipped or failed (said so in a note)
    seconds: float | None  # the case's wall time; None if skipped or failed
    failed: bool


def attempt(label: str, predicted: float | None, clock: Clock, report: Report, run: Callable[[], Any]) -> Outcome:
    """``run()`` unless its predicted seconds exceed what ``clock`` has left (or none is
    left); a note says why it was skipped, or how it failed."""
    left = clock.left()
    if left <= 0 or (predicted is not None and predicted > left):
        if predicted == math.inf:
            why = "a smaller case of this system was skipped or failed"
        else:
            why = "no time left" if predicted is None else f"predicted {predicted:.0f} s"
        report.note(f"{label}: skipped ({why}; {max(left, 0):.0f} s left of this part's budget)")
        return Outcome(None, None, False)
    print(f"  {label}" + ("" if predicted is None else f" (predicted {predicted:.0f} s)"), flush=True)
    start = time.perf_counter()
    try:
        result = run()
    except Exception as error:  # out of memory, a solver that fails on this machine: note it, go on
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        report.note(f"{label}: failed after {time.perf_counter() - start:.0f} s: {type(error).__name__}: {message}")
        return Outcome(None, None, True)
    seconds = time.perf_counter() - start
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return Outcome(result, seconds, False)


# ------------------------------------------------------------------------------- the parts

LINEAR_INTRO = (
    "Linear layers, long-dependency task: parallel_bptt (system.episode, an associative scan) against full_bptt "
    "(lax.scan of step); seq / par times are medians of interleaved rounds, memory the compiled temp bytes of the "
    "gradient (see benchmarks/parallel_time.py)."
)
SOLVER_INTRO = (
    "Nonlinear systems (contracting tanh RNN, GRU; float32): each solver of unroll.parallel.SOLVERS "
    "({solvers}) against sequential evaluation; forward = episode_loss vs unroll.parallel.solve_episode, "
    "gradient = one estimate (see benchmarks/parallel_time.py --deer)."
)


def run_linear(settings: Settings, clock: Clock, report: Report) -> list:
    rows, costs = [], Costs()
    for horizon, cell, width in settings.linear_cases:
        row, seconds, _ = attempt(
            f"parallel_time, {cell} width {width}, T = {horizon:,}",
            costs.predict((cell, width), horizon),
            clock,
            report,
            lambda: parallel_time.measure_case(cell, width, horizon, settings.timing_s, settings.max_repeats),
        )
        costs.record((cell, width), horizon, seconds)
        if row is not None:
            rows = sorted([*rows, row], key=lambda r: (r.horizon, r.cell, r.width))
            text = parallel_time.table(rows) + "\n\n" + parallel_time.goal_line(rows)
            report.set("linear", f"## Linear layers\n\n{LINEAR_INTRO}\n\n{text}")
    return rows


def run_solvers(settings: Settings, clock: Clock, report: Report) -> list:
    """Every solver on each case; where they fail together on a system's first case, each
    is tried alone there and the run goes on with those that ran."""
    solvers = every = settings.solvers or unroll_solvers()
    rows, costs = [], Costs()

    def measure(cell, width, horizon, solvers):
        return lambda: parallel_time.measure_deer_case(
            cell, width, horizon, settings.timing_s, settings.max_repeats, solvers=solvers
        )

    for horizon, cell, width in settings.solver_cases:
        label = f"parallel_time, {cell} width {width}, T = {horizon:,}"
        predicted = costs.predict((cell, width), horizon)
        found, seconds, failed = attempt(
            f"{label}, solvers {', '.join(solvers)}", predicted, clock, report, measure(cell, width, horizon, solvers)
        )
        if failed and len(solvers) > 1 and not costs.seen.get((cell, width)):  # its first case
            alone = {
                s: attempt(f"{label}, {s} alone", None, clock, report, measure(cell, width, horizon, (s,)))
                for s in solvers
            }
            ran = [s for s, outcome in alone.items() if outcome.result is not None]
            if ran:
                found = [row for s in ran for row in alone[s].result]
                seconds = sum(alone[s].seconds for s in ran)
                report.note(
                    f"going on with {', '.join(ran)} (left out: {', '.join(s for s in solvers if s not in ran)})"
                )
                solvers = tuple(ran)
        costs.record((cell, width), horizon, seconds if found is not None else None)
        if found is not None:
            rows = sorted([*rows, *found], key=lambda r: (r.horizon, r.cell, r.width, every.index(r.solver)))
            text = parallel_time.deer_table(rows) + "\n\n" + parallel_time.deer_line(rows)
            intro = SOLVER_INTRO.format(solvers=", ".join(every))
            report.set("solvers", f"## Nonlinear: parallel solvers\n\n{intro}\n\n{text}")
    return rows


def unroll_solvers() -> tuple[str, ...]:
    """``unroll.parallel.SOLVERS`` as the library has it now (more may have been added)."""
    import unroll.parallel

    return tuple(unroll.parallel.SOLVERS)


def evosax_usable(report: Report) -> bool:
    """Whether evosax imports; if it is installed but fails to import (another JAX, say), it
    is hidden from the benchmark, which then skips its columns as if not installed."""
    if pes_throughput.evosax_version() is None:
        report.note(
            "evosax not installed: the evosax PersistentES columns are skipped "
            "(`pip install -e '.[bench]'`; on the device machine, carry .device/site)"
        )
        return False
    try:
        import evosax.algorithms  # noqa: F401
    except Exception as error:
        sys.modules["evosax.algorithms"] = None  # the benchmark's import then raises ImportError
        report.note(
            f"evosax {pes_throughput.evosax_version()} fails to import ({type(error).__name__}: {error}); skipped"
        )
        return False
    return True


def run_pes(settings: Settings, clock: Clock, report: Report) -> list:
    evosax = evosax_usable(report)
    intro = (
        "unroll.pes against the forward floor (no estimation) and evosax's PersistentES "
        f"({'evosax ' + str(pes_throughput.evosax_version()) if evosax else 'evosax: skipped'}): linear-regression "
        f"SGD+momentum tuning, horizon {pes_throughput.HORIZON}, truncation {pes_throughput.TRUNCATION}, "
        f"{settings.pes_repeats} interleaved timed blocks (see benchmarks/pes_throughput.py)."
    )
    rows, costs = [], Costs()
    for total in settings.particles:
        lay = pes_throughput.layout(total)
        windows = pes_throughput.windows_for(lay, settings.windows, settings.max_block_steps)
        row, seconds, _ = attempt(
            f"pes_throughput, {total:,} particles ({lay.workers} workers x {lay.per_worker}), {windows} windows",
            costs.predict("pes", total),
            clock,
            report,
            lambda: pes_throughput.measure(lay, windows, settings.pes_repeats),
        )
        costs.record("pes", total, seconds)
        if row is not None:
            rows.append(row)
            report.set("pes", f"{intro}\n\n{pes_throughput.markdown_table(rows)}")
    return rows


def checkpoint_case(horizon: int, checkpoints: Sequence[int], leave_out: frozenset, repeats: int) -> list:
    """``checkpoint_memory``'s methods at one horizon less ``leave_out`` ((name, m) pairs),
    compiled, checked against ``full_bptt`` and timed in interleaved rounds; the peers'
    forward steps are not counted (a host callback per step)."""
    found = checkpoint_memory.methods(horizon, (), checkpoints, False)
    found = [m for m in found if (m.name, m.budget) not in leave_out]
    compiled, temps, grads = checkpoint_memory.compile_all(horizon, found)
    seconds = checkpoint_memory.interleaved_times(compiled, repeats)
    return [
        checkpoint_memory.Row(
            horizon, m.name, m.budget, temp, s, m.forward_steps(), checkpoint_memory.grad_error(g, grads[0])
        )
        for m, temp, s, g in zip(found, temps, seconds, grads)
    ]


def checkpoint_prediction(
    rows: Sequence, wall_s: float, last_checkpoints, horizon: int, checkpoints, leave_out, repeats: int
) -> float:
    """The next horizon's seconds from the last one's rows (run at ``last_checkpoints``):
    each method that runs again (a peer or ours at an m of ``checkpoints``, or ours at an m
    the benchmark chose itself, taken to come again; not those in ``leave_out``), its time
    per gradient scaled by its forward steps (``full_bptt`` and the nested scans: T;
    ``checkpointed_bptt``: its plan; equinox: like ours at the same m), times the runs
    (warm-up and ``repeats``), plus the last horizon's compile and set-up time."""
    from unroll.checkpointing import plan

    last = rows[0].horizon
    runs = repeats + 1
    overhead = max(0.0, wall_s - runs * sum(r.seconds for r in rows))
    steps = lambda t, r: plan(t, r.budget).forward_steps if r.name in ("checkpointed_bptt", "equinox") else t
    again = lambda r: (
        r.name in ("full_bptt", "nested")
        or r.budget in checkpoints
        or (r.name == "checkpointed_bptt" and r.budget not in last_checkpoints)
    )
    kept = [r for r in rows if again(r) and (r.name, r.budget) not in leave_out]
    return overhead + runs * sum(r.seconds * steps(horizon, r) / steps(last, r) for r in kept)


CHECKPOINT_INTRO = (
    "checkpointed_bptt against full_bptt, equinox's checkpointed scan and jax.checkpoint-nested scans (tanh RNN "
    "hidden {hidden}; forward steps of the peers not counted here: '-'); {repeats} timed round(s) after a warm-up "
    "(see benchmarks/checkpoint_memory.py)."
)


def run_checkpoint(settings: Settings, clock: Clock, report: Report) -> list:
    intro = CHECKPOINT_INTRO.format(hidden=checkpoint_memory.HIDDEN, repeats=settings.checkpoint_repeats)
    rows, last = [], None
    for horizon, checkpoints, leave_out in settings.checkpoint_plan:
        left_out = ", ".join(f"{name} m = {m}" for name, m in sorted(leave_out))
        predicted = None
        if last is not None:
            predicted = checkpoint_prediction(*last, horizon, checkpoints, leave_out, settings.checkpoint_repeats)
        found, seconds, _ = attempt(
            f"checkpoint_memory, T = {horizon:,}, m = {', '.join(map(str, checkpoints))}"
            + (f", without {left_out}" if left_out else ""),
            predicted,
            clock,
            report,
            lambda: checkpoint_case(horizon, checkpoints, leave_out, settings.checkpoint_repeats),
        )
        if found is None:
            break  # the larger horizons would cost more still
        rows += found
        last = (found, seconds, checkpoints)
        report.set("checkpoint", f"{intro}\n\n{checkpoint_memory.table(rows)}")
    return rows


# ------------------------------------------------------------------------------- the run


class Part(NamedTuple):
    benchmark: str  # the module, and the file <benchmark>-<platform>.md
    weight: float  # its share of the budget, among the parts still to run
    run: Callable[[Settings, Clock, Report], list]


PARTS = (
    Part("parallel_time", 170, run_linear),
    Part("parallel_time", 80, run_solvers),
    Part("pes_throughput", 60, run_pes),
    Part("checkpoint_memory", 100, run_checkpoint),
)
TITLES = {
    "parallel_time": "Parallel in time: parallel_bptt and the parallel solvers against sequential evaluation",
    "pes_throughput": "PES throughput: unroll.pes against the forward floor and evosax",
    "checkpoint_memory": "checkpointed_bptt: memory and time against full_bptt, equinox and nested jax.checkpoint",
}
RESERVE_S = 10.0  # kept back for the plots and the last writes


def plot(benchmark: str, results: dict[str, list], path: str) -> None:
    linear, solvers = results.get("run_linear", []), results.get("run_solvers", [])
    if benchmark == "parallel_time" and (linear or solvers):
        parallel_time.plot(linear, solvers, path)
    elif benchmark == "checkpoint_memory" and results.get("run_checkpoint"):
        checkpoint_memory.plot(results["run_checkpoint"], path)


def run_parts(settings: Settings, names: Sequence[str], budget_s: float, out_dir: str, command: str) -> dict:
    """Each part in turn, on its share of what is left; returns ``{benchmark: its md path}``."""
    clock = Clock(budget_s - RESERVE_S)
    parts = [p for p in PARTS if p.benchmark in names]
    suffix = f"-{platform_name()}"
    reports, results = {}, {}
    for i, part in enumerate(parts):
        if part.benchmark not in reports:
            path = os.path.join(out_dir, f"{part.benchmark}{suffix}.md")
            reports[part.benchmark] = Report(path, TITLES[part.benchmark], command)
        share = max(0.0, clock.left()) * part.weight / sum(p.weight for p in parts[i:])
        print(f"=== {part.benchmark}: {part.run.__name__}, {share:.0f} s of {clock.left():.0f} s left", flush=True)
        start = time.perf_counter()
        results[part.run.__name__] = part.run(settings, Clock(share), reports[part.benchmark])
        print(f"=== {part.run.__name__}: {time.perf_counter() - start:.0f} s", flush=True)
    for benchmark, report in reports.items():
        try:
            plot(benchmark, results, report.path.removesuffix(".md") + ".png")
        except Exception as error:  # a plot is a bonus; the tables are written
            print(f"  no plot for {benchmark}: {type(error).__name__}: {error}", flush=True)
    return {benchmark: report.path for benchmark, report in reports.items()}


def stage_deps(target: str) -> None:
    """Copies ``STAGED`` (source and metadata, no bytecode) from this environment into
    ``target``, a folder to put on the device machine's ``PYTHONPATH``."""
    from importlib.metadata import distribution

    total = 0
    for name in STAGED:
        dist = distribution(name)
        for file in dist.files or ():
            if ".." in file.parts or "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            dest = os.path.join(target, *file.parts)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(dist.locate_file(file), dest)
            total += os.path.getsize(dest)
        print(f"staged {name} {dist.version}")
    print(f"{target}: {total / 2**20:.1f} MiB")


def out_dir_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """benchmarks/results for a full run off CPU; a fresh temporary folder for a quick or a
    CPU run unless ``--out-dir`` names one; never benchmarks/results from a quick run, nor
    from a CPU run without ``--force``."""
    on_cpu = jax.devices()[0].platform == "cpu"
    if args.out_dir is None:
        return tempfile.mkdtemp(prefix="unroll-device-") if args.quick or on_cpu else RESULTS
    into_results = os.path.realpath(args.out_dir) == os.path.realpath(RESULTS)
    if into_results and args.quick:
        parser.error("a --quick run does not write into benchmarks/results; give another --out-dir")
    if into_results and on_cpu and not args.force:
        parser.error(
            "on a CPU this run would overwrite benchmarks/results/*-cpu.md (written by the full runs); "
            "give another --out-dir, or --force"
        )
    os.makedirs(args.out_dir, exist_ok=True)
    return args.out_dir


def quick_compiles() -> None:
    """XLA at optimization level 0, as the tests run it: a smoke run's time is compiling tiny
    programs, whose speed does not matter (set before JAX starts its backend; a flag
    already in ``XLA_FLAGS`` is kept)."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag in ("xla_backend_optimization_level=0", "xla_llvm_disable_expensive_passes=true"):
        if flag.split("=")[0] not in flags:
            flags += f" --{flag}"
    os.environ["XLA_FLAGS"] = flags.strip()


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run's seconds (default: 420)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny horizons and particle counts (CPU)")
    parser.add_argument("--only", nargs="+", choices=sorted(TITLES), help="run only these benchmarks")
    parser.add_argument("--out-dir", help="where the .md (and .png) go (default: see the module doc)")
    parser.add_argument(
        "--solvers", nargs="+", help="the parallel solvers to measure (default: all of unroll.parallel.SOLVERS)"
    )
    parser.add_argument("--force", action="store_true", help="on a CPU, allow --out-dir benchmarks/results")
    parser.add_argument(
        "--stage-deps", metavar="DIR", help=f"copy {', '.join(STAGED)} into DIR for the device, and stop"
    )
    args = parser.parse_args(argv)
    if args.stage_deps:
        stage_deps(args.stage_deps)
        return {}
    out_dir = out_dir_for(args, parser)
    command = "python -m benchmarks.device " + " ".join(argv if argv is not None else sys.argv[1:])
    print(device_line(), flush=True)
    print(f"budget {args.budget_s:.0f} s; writing into {out_dir}", flush=True)
    start = time.perf_counter()
    settings = (QUICK if args.quick else FULL)._replace(solvers=tuple(args.solvers) if args.solvers else None)
    written = run_parts(settings, args.only or sorted(TITLES), args.budget_s, out_dir, command.strip())
    print(f"done in {time.perf_counter() - start:.0f} s; wrote " + ", ".join(written.values()), flush=True)
    return written


if __name__ == "__main__":
    if "--quick" in sys.argv[1:]:
        quick_compiles()  # here, not in main: a caller's process keeps its flags
    main()
