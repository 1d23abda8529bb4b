"""``advise``, step by step: it checks its arguments, measures the system (chaos, then the reference
gradient), lists and measures the candidates within the time left, ranks them and records the `Advice`.

The keys: ``fold_in(key, 0)`` the Lyapunov trajectories, ``1`` the gradient norms, ``2`` the
reference, ``3`` the candidates."""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadType, BadValue
from unroll.advisor._candidates import list_candidates, parse_candidates
from unroll.advisor._measure import Measurer
from unroll.advisor._rank import rank
from unroll.advisor._report import Advice, AdviceRow, Recommendation
from unroll.advisor._system import Chaos, Reference, measure_chaos, measure_reference
from unroll.advisor._thresholds import MIN_SECONDS, REFERENCE_SHARE
from unroll.task import Task, check_memory_limit, memory_models


def advise(
    task: Task | str,
    *,
    key: Any = None,
    seconds: float = 120.0,
    memory_budget: int | str | None = None,
    candidates: list[str] | None = None,
    grid: bool = True,
    progress: bool = True,
    task_options: dict | None = None,
) -> Advice:
    r"""Measures `task`'s system at `task.theta` and recommends an estimator, with the evidence.

    The module's docstring gives every measurement and the rule:

    * chaos: $\lambda_1 \pm \mathrm{SE}$ and the exact gradient's norm against the horizon;
    * a reference gradient $G$, exact or (under chaos) of the $\sigma$-smoothed loss;
    * per candidate: seconds and system steps per call, compiled memory, and bias, cosine and
      SNR against $G$;
    * the rank by expected progress per second,
      $\max(\cos, 0)^2\, \mathrm{snr} / (1 + \mathrm{snr}) / \text{seconds per call}$,
      biased, exploding and over-budget candidates excluded.

    Args:
      task: an ``unroll.Task``, or what ``unroll compare`` takes: a built-in name,
        ``"path/to/file.py:NAME"`` or ``"package.module:NAME"``.
      key: the measurements' key (an int seed or a JAX key). Default: ``key(0)``.
      seconds: the whole call's budget in seconds (at least ``MIN_SECONDS``); the candidates'
        measurements shrink, then candidates are skipped, to fit.
      memory_budget: the most compiled memory a candidate may take (bytes, or a size such as
        ``"64MiB"``). Default: ``task.memory_limit``.
      candidates: registry names to consider (``"tbptt-10"`` fixes a truncation; a plain name
        gets the task's settings and the grid). Default: every registered estimator.
      grid: also measure the grid of settings around the task's (truncations, particles, sigma);
        ``False`` measures each candidate at the task's settings only (quicker).
      progress: a progress bar over the candidates.
      task_options: keyword arguments of the function that makes the task (a name or spec).

    Returns:
      An ``Advice``: ``recommendation`` (None, with the reasons, when no candidate qualifies),
      ``rows``, ``exponent``, ``chaotic``, ``reference``, ``reasons``, ``estimator()``,
      ``to_markdown()``, ``to_json()``.
    """
    from unroll._task_loader import load_task

    seconds = _check_seconds(seconds)
    task = load_task(task, task_options).task
    budget = _check_memory(memory_budget, task)
    parsed = parse_candidates(candidates, task)
    key = _key(key)
    clock = _Clock(seconds)
    system, theta = task.system, task.theta
    chaos = measure_chaos(system, theta, jax.random.fold_in(key, 0), jax.random.fold_in(key, 1))
    share = min(REFERENCE_SHARE * seconds, max(clock.left() - 2.0, 1.0))
    sigma = float(task.settings["sigma"])
    reference = measure_reference(system, theta, jax.random.fold_in(key, 2), sigma, share, chaos)
    rows, spent = _measure_candidates(
        task, parsed, chaos, reference, jax.random.fold_in(key, 3), clock, budget, grid, progress
    )
    timings = {**chaos.timings, "reference": reference.seconds, "candidates": spent}
    rows, recommendation, verdicts = rank(rows, budget, task)
    return _record(task, chaos, reference, rows, recommendation, verdicts, clock, timings, budget)


def _measure_candidates(
    task: Task, parsed, chaos: Chaos, reference: Reference, key, clock, budget: int, grid: bool, progress: bool
) -> tuple[list[AdviceRow], float]:
    """The rows of the candidates that do not apply, then of those measured (from ``key``) in the time left;
    and the seconds the measured ones took."""
    candidate_list, not_applicable = list_candidates(task, parsed, chaos.chaotic, chaos.exponent, budget, grid)
    if not candidate_list and not not_applicable:
        raise BadValue("no candidate to measure; pass at least one registered estimator in `candidates`.")
    first_cost = 3.0  # seconds: a guess at one candidate's compile and measurement until one is measured
    if clock.left() < first_cost:
        raise BadValue(
            f"`seconds`={clock.seconds:g} leaves no time for a candidate: the system's measurements (chaos, gradient "
            f"norms, reference) took {clock.elapsed():.1f} s and one candidate takes about {first_cost:g} s more; "
            f"pass seconds >= {math.ceil(clock.elapsed() + 4 * first_cost)}."
        )
    measure = Measurer(task, reference.gradient, reference.error, key, clock, budget, chaos.exploding, chaos.exponent)
    full_model = memory_models(task.system, task.theta, task.settings)["full-bptt"]
    if full_model > budget:  # full-bptt is not compiled: checkpointed-bptt stands in
        measure.full_bptt_memory = full_model
    rows = list(not_applicable)
    tick = time.perf_counter()
    rows += measure.all(candidate_list, progress)
    return rows, time.perf_counter() - tick


def _record(
    task: Task,
    chaos: Chaos,
    reference: Reference,
    rows: list[AdviceRow],
    recommendation: Recommendation | None,
    verdicts: list[str],
    clock,
    timings: dict,
    budget: int,
) -> Advice:
    """The `Advice`: the measurements, the ranked rows and every reason."""
    return Advice(
        task=task,
        recommendation=recommendation,
        rows=tuple(rows),
        exponent=chaos.exponent,
        exponent_error=chaos.exponent_error,
        chaotic=chaos.chaotic,
        exploding=chaos.exploding,
        reference=reference.kind,
        reference_error=reference.relative_error,
        reference_samples=reference.count,
        reference_gradient=reference.gradient,
        reference_standard_error=reference.error,
        reasons=tuple([*chaos.reasons, reference.reason, *verdicts]),
        skipped=tuple(f"{row.label}: {row.note}" for row in rows if row.verdict == "not measured"),
        horizons=np.asarray(chaos.horizons),
        norm_median=chaos.norm_median,
        norm_max=chaos.norm_max,
        running=chaos.running,
        seconds=clock.elapsed(),
        timings=timings,
        budget={"seconds": clock.seconds, "memory_budget": budget},
    )


class _Clock:
    """The time left of the call's budget."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


def _check_seconds(seconds: Any) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise BadType(f"`seconds` must be a number of seconds, got {seconds!r}; e.g. seconds=120.")
    if seconds < MIN_SECONDS:
        raise BadValue(
            f"`seconds`={seconds:g} is below what the system's own measurements need ({MIN_SECONDS:g} s: compiling "
            "the Lyapunov, gradient and reference computations alone takes seconds on a CPU); pass seconds >= "
            f"{MIN_SECONDS:g}, e.g. seconds=120."
        )
    return float(seconds)


def _check_memory(memory_budget: Any, task: Task) -> int:
    """``memory_budget`` in bytes; ``task.memory_limit`` where it is None."""
    if memory_budget is None:
        return check_memory_limit(task.memory_limit)
    return check_memory_limit(memory_budget, "memory_budget", "; it bounds each candidate's compiled memory")


def _key(key: Any) -> jax.Array:
    if key is None:
        return jax.random.key(0)
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raise BadType(f"`key` must be an int seed or a JAX key (jax.random.key(0)), got {key!r}.")
