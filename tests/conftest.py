"""Test-session setup.

* float64 everywhere, so gradient checks can be tight (``jax_enable_x64``).
* XLA's CPU backend at optimization level 0: the tests run tiny systems, where the
  time goes into compiling (vmapped scans of threefry-heavy windows compile 3x
  faster), not running. Numerics stay IEEE float64. Set ``UNROLL_TEST_XLA_OPT=1``
  to keep XLA's default; a ``--xla_backend_optimization_level`` already in
  ``XLA_FLAGS`` is respected.
* One JAX compilation cache for the session (``JAX_COMPILATION_CACHE_DIR``, a fresh
  temporary folder, removed at the end): many tests build the same small estimators
  anew, and the subprocess tests (resume, CLI, sharding, notebooks) compile what
  another process already compiled; the cache turns those compiles into loads of the
  same executable (same numbers, bit for bit). Every process of the session shares
  it: the xdist workers and every subprocess inherit the variable. ``UNROLL_TEST_CACHE=0``
  turns it off; a ``JAX_COMPILATION_CACHE_DIR`` already set is used as it is.
* The suite runs on every CPU through pytest-xdist, a test file per unit of work
  (``addopts`` in pyproject.toml; ``-n 0`` runs it in one process).
  ``pytest_collection_modifyitems`` puts the files that take longest first: xdist
  hands the files out in that order, so the long ones start at once and the short
  ones fill in at the end.

The small systems the tests share live in ``tests/systems.py`` (plain functions,
importable as ``from tests.systems import ...``).
"""

import os
import shutil
import tempfile


def _add_xla_flag(name: str, value: str, speed_only: bool = True) -> None:
    """Appends ``--name=value`` to ``XLA_FLAGS`` unless the flag is already there (a user's setting
    wins) or, for a flag that only buys speed, ``UNROLL_TEST_XLA_OPT=1`` keeps XLA's defaults."""
    flags = os.environ.get("XLA_FLAGS", "")
    if name not in flags and not (speed_only and os.environ.get("UNROLL_TEST_XLA_OPT") == "1"):
        os.environ["XLA_FLAGS"] = f"{flags} --{name}={value}".strip()


_add_xla_flag("xla_backend_optimization_level", "0")
# XLA:CPU's older elemental emitters for fusions compile the suite's small programs in about
# half the time of the default (MLIR) fusion emitters (a vmapped PES sampler: 1.9 s -> 0.8 s);
# the numbers are IEEE float64 either way, equal to ~1 ulp (another order of the same
# operations). UNROLL_TEST_XLA_OPT=1 keeps XLA's default here too.
_add_xla_flag("xla_cpu_use_fusion_emitters", "false")
# And LLVM's expensive optimization passes off: another ~10% of the suite's compile time
# (test_determinism 36.8 -> 33.0 s, test_rtrl + test_checkpointing 86.1 -> 77.7 s, one
# process each). No fast-math is enabled, so the passes left cannot reorder float arithmetic.
_add_xla_flag("xla_llvm_disable_expensive_passes", "true")
# And one LLVM module per executable, not XLA:CPU's default split into parts compiled on
# parallel threads: the workers already use every CPU (test_rtrl, one process, interleaved runs:
# backend compile 21.6/23.7 -> 18.5/20.1 s). Numbers equal to ~1 ulp. With it, DEER on the
# learned-optimizer loop wedged XLA:CPU in every run without the compilation cache, until the
# concurrency-optimized scheduler was turned off (below).
_add_xla_flag("xla_cpu_parallel_codegen_split_count", "1")
# At level 0, XLA:CPU's multi-threaded Eigen pool can wedge (0% CPU, forever) on vmapped
# while loops of small matmuls and LAPACK calls: DEER on the learned-optimizer inner loop,
# once another computation has run in the process. Single-threaded Eigen avoids it.
_add_xla_flag("xla_cpu_multi_thread_eigen", "false", speed_only=False)
# Nor was that: the same DEER tests still wedged XLA:CPU now and then (test_deer's
# test_the_gradient_is_full_bptt[lopt-*], all threads idle in the Eigen pools, once in a full CI
# run; every time with --xla_cpu_parallel_codegen_split_count=1 and no compilation cache, 4 runs
# of 4). XLA's concurrency-optimized scheduler orders a program's thunks to run side by side;
# without it, 3 runs of 3 of that repro passed. It changes the order, not the arithmetic.
_add_xla_flag("xla_cpu_enable_concurrency_optimized_scheduler", "false", speed_only=False)
# That was not all of it: the LAPACK calls (the learned optimizer's quadratic draws its
# matrix by a QR every step) go to scipy-openblas, whose own thread pool can deadlock when
# XLA runs two such calls at once (reproduced: with --xla_cpu_use_thunk_runtime=false the
# DEER gradient test on that loop hung 2 runs of 2; with OPENBLAS_NUM_THREADS=1, 0 of 2,
# and once in a full suite run at the defaults). Set before numpy or jaxlib load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# made by the first process of the session (the xdist controller); its workers find it set
_OWN_CACHE_DIR = None
if os.environ.get("UNROLL_TEST_CACHE") != "0" and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="unroll-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
    # every compile, not only those over 1 s: most of the suite's take 0.1-1 s
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (XLA_FLAGS must be set before the backend starts)

jax.config.update("jax_enable_x64", True)
if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # (also when jax was imported before this file)
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")),
    )

# The files that take longest, longest first (seconds of one xdist worker in a full run on the 2-core
# machine, 2026-12-07, `--durations=0` summed per file): notebooks 124, advisor_tasks 112, tasks_lopt 70,
# advisor 59, deer 58, guides 57, cli 57, resume 54, comparison 51, sharding 47, rtrl 45, evolution 44,
# cells 43, determinism 43, properties 41, checkpointing 40, gpes 31, diagnostics 26, task_loader 23,
# long_runs 20, bptt 19. The ~20 others (under 15 s each) follow in their usual order.
SLOW_FIRST = (
    "test_notebooks.py",
    "test_deer.py",  # with ELK's solvers (issue 30): about twice its 58 s
    "test_advisor_tasks.py",
    "test_tasks_lopt.py",
    "test_advisor.py",
    "test_guides.py",
    "test_cli.py",
    "test_resume.py",
    "test_comparison.py",
    "test_sharding.py",
    "test_rtrl.py",
    "test_evolution.py",
    "test_cells.py",
    "test_determinism.py",
    "test_properties.py",
    "test_benchmarks.py",  # benchmarks/device.py --quick, 25-40 s (issue 30)
    "test_checkpointing.py",
    "test_gpes.py",
    "test_diagnostics.py",
    "test_task_loader.py",
    "test_long_runs.py",
    "test_bptt.py",
)


def pytest_collection_modifyitems(config, items):
    """The slow files first (a stable sort: each file's tests stay together, in order,
    so module-scoped fixtures are still set up once per file)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))


def pytest_unconfigure(config):
    if _OWN_CACHE_DIR is not None:
        shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per CPU this process may run on (xdist's own count is the
    machine's physical cores, which a container or a hyperthreaded VM misreports), at most
    8: the longest file is ~155 s of the suite's ~800 (CPU), and each worker is a JAX process
    of 1-2 GB."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))
