"""The measurement of each candidate, in order within the time left: its compiled seconds per
``estimate`` call (median of ``REPEATS``), system steps and compiled memory (``compiled_memory``),
its flags (over budget, exploding over its ``span``), and against the reference its bias, cosine and
SNR from ``NUM_SAMPLES`` samples of ``windows_per_sample`` windows (``Measurer``); the exact-episode
estimators (``exact_episodes``) share one measurement of these, taken on the fastest of them."""

from __future__ import annotations

import functools
import math
import time
import warnings

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll import registry
from unroll.advisor._candidates import Candidate
from unroll.advisor._rank import expected_progress
from unroll.advisor._report import AdviceRow, empty_row
from unroll.advisor._thresholds import BIAS_TOLERANCE, GROWTH_FACTOR, bias_threshold
from unroll.checkpointing import format_bytes
from unroll.diagnostics import quality_of_windows, window_sampler
from unroll.task import trajectory_sizes

NUM_SAMPLES, _CHUNK = 32, 8  # gradient_quality samples per candidate, taken _CHUNK at a time while time allows
REPEATS = 5  # timed calls per candidate (the median is reported)
# the figures an exact-episode estimator's quality measurement shares with the others from the same workers
_SHARED = ("windows_per_sample", "num_samples", "quality_index", "bias_z", "relative_bias", "cosine")
_SHARED += ("mean_cosine", "snr")


def exact_episodes(name: str) -> bool:
    """Whether `name` computes the exact gradient of whole episodes.

    These are the BPTT family's estimators without a window (full, parallel, DEER, checkpointed).
    From the same workers they give the same estimate (their tests prove parallel == sequential ==
    checkpointed), so their bias, cosine and SNR are measured once, on the fastest, and shared; they differ in
    seconds and memory.

    Args:
      name: a registry name.

    Returns:
      True for a BPTT-family estimator that is not windowed.
    """
    entry = registry.get(name)
    return entry.family == "bptt" and not entry.windowed


def windows_per_sample(horizon: int, truncation: int, num_workers: int) -> int:
    r"""The consecutive windows after which staggered workers have covered every step of an episode equally often.

    That is $\mathrm{lcm}(K, T / W) / K$ windows of $K$ steps where $W$ divides $T$ (worker $w$
    starts at $w T / W$), else $\mathrm{lcm}(K, T) / K$ (each worker alone covers whole episodes).

    Args:
      horizon: the episode length $T$.
      truncation: the window length $K$.
      num_workers: the staggered workers $W$.

    Returns:
      The number of windows, an int.
    """
    stride = horizon // num_workers if horizon % num_workers == 0 else horizon
    return math.lcm(truncation, stride) // truncation


def span(name: str, settings: dict, horizon: int) -> int:
    """The steps a candidate differentiates through, from its registry family.

    None for the ES family (0); its window for a windowed BPTT or synthetic-gradient estimator
    (`tbptt`, `dni`); the whole episode for the exact ones and the forward-mode ones (which carry
    their influence or tangents across windows).

    Args:
      name: a registry name.
      settings: its constructor's keyword arguments (`truncation` is read for a windowed one).
      horizon: the episode length $T$.

    Returns:
      The span in steps: 0, the truncation $K$, or $T$.
    """
    entry = registry.get(name)
    if entry.family == "es":
        return 0
    if entry.family in ("bptt", "synthetic") and entry.windowed:
        return int(settings["truncation"])
    return horizon


def compiled_memory(compiled) -> int:
    """The bytes of a compiled call by XLA's memory analysis.

    Arguments, outputs and temporaries are counted, outputs that alias arguments once.

    Args:
      compiled: `jax.jit(f).lower(...).compile()`.

    Returns:
      The bytes, an int; -1 where the backend gives no analysis.
    """
    analysis = compiled.memory_analysis()
    if analysis is None:
        return -1
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


class Measurer:
    """Measures candidates in order within the clock's time."""

    def __init__(self, task, reference, error, key, clock, budget, exploding, exponent):
        self.task, self.reference, self.error, self.key = task, reference, error, key
        self.clock, self.budget, self.exploding, self.exponent = clock, budget, exploding, exponent
        self.compile_times: list[float] = []
        self.index = 0
        self.full_bptt_memory: int | None = None
        self.bias_threshold = bias_threshold(ravel_pytree(task.theta)[0].size)
        self.slowdown = 1.5  # gradient_quality's samples against the timed calls (measured as it goes)
        self.exact_quality: dict[int, tuple] = {}  # num_workers -> (label measured, quality figures, flags, notes)
        self.timed: dict[str, tuple] = {}  # label -> _prepared's (settings, estimator, refused row, figures)
        self.candidates: list[Candidate] = []

    def all(self, candidates: list[Candidate], progress: bool) -> list[AdviceRow]:
        from unroll._progress import progress as bar

        rows, self.candidates = [], candidates
        first_left = sum(c.first_pass for c in candidates)
        for i in bar(len(candidates), "advise: candidates", enabled=progress):
            candidate = candidates[i]
            first_left -= candidate.first_pass
            share = self.clock.left() / max(1, (first_left + 1) if candidate.first_pass else len(candidates) - i)
            rows.append(self.one(candidate, share))
        return rows

    def compile_estimate(self) -> float:
        return float(np.mean(self.compile_times)) if self.compile_times else 2.0

    def one(self, candidate: Candidate, share: float) -> AdviceRow:
        start = time.perf_counter()
        row = self._one(candidate, share)
        return row._replace(measure_seconds=time.perf_counter() - start)

    def _one(self, candidate: Candidate, share: float) -> AdviceRow:
        """Builds, times, flags and (time allowing) measures the quality of one candidate: its row."""
        name = candidate.name
        settings, estimator, refused, figures = self._prepared(candidate)
        if refused is not None:
            return refused
        row = functools.partial(empty_row, candidate.label, name, settings)
        figures = dict(figures)
        flags, notes = self._cost_flags(name, settings, figures)
        if "over budget" in flags:
            return row(", ".join(flags), "; ".join(notes), **figures)
        workers = int(settings.get("num_workers", 1))
        windows = (
            1
            if "truncation" not in settings
            else windows_per_sample(self.task.system.horizon, int(settings["truncation"]), workers)
        )
        exact = exact_episodes(name)
        if exact and workers not in self.exact_quality:  # measured once, on the fastest of the same estimate
            source, source_estimator, source_seconds = self._fastest_exact(candidate, estimator, figures, workers)
            allowance, quality_compile, per_sample, why = self._allowance(share, windows, source_seconds)
            if why is not None:
                return row(", ".join(flags) or "not measured", why, **figures)
            measured, quality_flags, quality_notes = self._judge_quality(
                source_estimator, windows, allowance, quality_compile, per_sample
            )
            shared = {k: measured[k] for k in _SHARED}
            self.exact_quality[workers] = (source, shared, quality_flags, quality_notes)
        if exact:
            source, measured, quality_flags, quality_notes = self.exact_quality[workers]
            if source != candidate.label:
                quality_notes = [f"the same exact estimate as {source}: its bias, cosine and SNR"]
        else:
            allowance, quality_compile, per_sample, why = self._allowance(share, windows, figures["seconds"])
            if why is not None:
                return row(", ".join(flags) or "not measured", why, **figures)
            measured, quality_flags, quality_notes = self._judge_quality(
                estimator, windows, allowance, quality_compile, per_sample
            )
        figures.update(measured)
        flags += quality_flags
        notes += quality_notes
        if not flags and not (exact and source != candidate.label):
            notes.append(f"{figures['num_samples']} samples of {windows} window(s)")
        return row(", ".join(flags) or "ok", "; ".join(notes), **_with_progress(figures))

    def _prepared(
        self, candidate: Candidate, keep_refused: bool = True
    ) -> tuple[dict, object, AdviceRow | None, dict | None]:
        """``(settings, estimator, refused row, timed figures)``: built and timed once (an exact-episode
        candidate may have been timed ahead of its turn, by ``_fastest_exact``, which does not keep a refusal:
        that one is built again at its turn, for the reason or the time left then)."""
        if candidate.label in self.timed:
            return self.timed[candidate.label]
        settings, estimator, refused = self._build(candidate)
        figures = None if refused is not None else self._time(estimator, candidate.name, settings)
        if refused is None or keep_refused:
            self.timed[candidate.label] = (settings, estimator, refused, figures)
        return settings, estimator, refused, figures

    def _fastest_exact(self, candidate: Candidate, estimator, figures: dict, workers: int):
        """``(label, estimator, seconds per call)`` of the fastest candidate within the memory budget that computes
        the same exact estimate as ``candidate`` (same workers): the others still to come are built and timed now,
        so that their shared quality is sampled at the least cost (at T = 10,000: parallel-bptt, 3x faster than
        full-bptt)."""
        best = (figures["seconds"], candidate.label, estimator)
        for other in self.candidates:
            if other.label == candidate.label or not exact_episodes(other.name):
                continue
            settings, other_estimator, refused, timed = self._prepared(other, keep_refused=False)
            if refused is not None or int(settings.get("num_workers", 1)) != workers:
                continue
            if "over budget" not in self._cost_flags(other.name, settings, timed)[0] and timed["seconds"] < best[0]:
                best = (timed["seconds"], other.label, other_estimator)
        return best[1], best[2], best[0]

    def _build(self, candidate: Candidate) -> tuple[dict, object, AdviceRow | None]:
        """``(settings, estimator, None)``, or ``(settings, None, row)`` with the row that says why it is not
        measured (checkpointing not needed or no room for it, no time left, a constructor that refuses)."""
        name, settings = candidate.name, dict(candidate.settings)
        if name == "checkpointed-bptt":
            settings, why = self._checkpoint_slots(settings)
            if why is not None:
                return settings, None, empty_row(candidate.label, name, settings, "not applicable", why)
        needed = 2.5 * self.compile_estimate()  # init and estimate, then gradient_quality's compile, then its run
        if self.clock.left() < needed:
            why = f"time: {max(self.clock.left(), 0):.1f} s left, about {needed:.1f} s needed to compile and measure it"
            return settings, None, empty_row(candidate.label, name, settings, "not measured", why)
        try:
            estimator = registry.get(name).constructor(self.task.system, **settings)
        except (TypeError, ValueError) as err:
            return (
                settings,
                None,
                empty_row(candidate.label, name, settings, "not applicable", str(err).splitlines()[0]),
            )
        return settings, estimator, None

    def _time(self, estimator, name: str, settings: dict) -> dict:
        """Compiles ``init`` and ``estimate`` and times ``REPEATS`` calls: the figures ``seconds``, ``system_steps``,
        ``memory``, ``compile_seconds`` and ``span``."""
        theta = self.task.theta
        start = time.perf_counter()
        init = jax.jit(estimator.init)
        key = jax.random.fold_in(self.key, 1_000_000 + self.index)
        state = init(theta, key)
        compiled = jax.jit(estimator.estimate).lower(theta, state, key).compile()
        memory = compiled_memory(compiled)
        _, state, info = jax.block_until_ready(compiled(theta, state, key))
        compile_seconds = time.perf_counter() - start
        self.compile_times.append(compile_seconds)
        times = []
        for r in range(REPEATS):  # timed calls of the compiled window (no Python loop over steps)
            tick = time.perf_counter()
            _, state, info = jax.block_until_ready(compiled(theta, state, jax.random.fold_in(key, r + 1)))
            times.append(time.perf_counter() - tick)
        if name == "full-bptt":
            self.full_bptt_memory = memory
        return dict(
            seconds=float(np.median(times)),
            system_steps=int(info["steps"]),
            memory=memory,
            compile_seconds=compile_seconds,
            span=span(name, settings, self.task.system.horizon),
        )

    def _cost_flags(self, name: str, settings: dict, figures: dict) -> tuple[list[str], list[str]]:
        """``(flags, notes)`` from the timed figures: over budget (compiled memory), exploding (its span)."""
        flags, notes = [], []
        memory, differentiated = figures["memory"], figures["span"]
        if name == "checkpointed-bptt":
            notes.append(f"{settings['memory_budget']} states stored per episode")
        if memory > self.budget:
            flags.append("over budget")
            notes.append(f"compiled memory {format_bytes(memory)} > budget {format_bytes(self.budget)}")
        if self.exploding and self.exponent * differentiated >= math.log(GROWTH_FACTOR):
            flags.append("exploding")
            notes.append(
                f"differentiates through {differentiated} steps: exp(lambda_1 K) = "
                f"{math.exp(min(self.exponent * differentiated, 700)):.3g}"
            )
        return flags, notes

    def _allowance(self, share: float, windows: int, seconds: float) -> tuple[float, float, float, str | None]:
        """``(allowance, quality compile guess, seconds per sample, None)``: the seconds the quality measurement
        may take (its share, or where that is too little one chunk's, over its share but within the time left);
        the last is why not where a first chunk does not fit even the time left."""
        per_sample = windows * seconds
        quality_compile = 1.2 * self.compile_estimate()
        need = quality_compile + _CHUNK * per_sample * self.slowdown
        allowance = min(max(share, need), self.clock.left())  # one chunk at least, not the others' time
        if need > allowance:
            why = (
                f"time: {_CHUNK} samples of {windows} window(s) at {seconds:.3g} s need about {need:.1f} s, "
                f"{max(self.clock.left(), 0):.1f} s left"
            )
            return allowance, quality_compile, per_sample, why
        return allowance, quality_compile, per_sample, None

    def _judge_quality(self, estimator, windows: int, allowance: float, quality_compile: float, per_sample: float):
        """The quality figures against the reference (the next ``quality_index``), and their flags and notes:
        non-finite, or biased (bias z over the family-wise threshold and relative bias over ``BIAS_TOLERANCE``)."""
        index = self.index
        self.index += 1
        quality = self._quality(estimator, windows, index, allowance, quality_compile, per_sample)
        measured = dict(
            windows_per_sample=windows,
            num_samples=quality.samples.shape[0],
            quality_index=index,
            bias_z=quality.bias_z,
            relative_bias=quality.relative_bias,
            cosine=quality.cosine_of_mean,
            mean_cosine=quality.mean_cosine,
            snr=quality.window_snr,
        )
        flags, notes = [], []
        if not np.all(np.isfinite(np.asarray(quality.samples))):
            flags.append("non-finite")
            notes.append("some estimates are not finite")
        elif quality.bias_z > self.bias_threshold and quality.relative_bias > BIAS_TOLERANCE:
            flags.append("biased")
            notes.append(f"bias {quality.bias_z:.3g} standard errors, {quality.relative_bias:.2f} of |G|")
        return measured, flags, notes

    def _quality(self, estimator, windows: int, index: int, allowance: float, compile_guess: float, per_sample):
        """``gradient_quality`` in chunks of ``_CHUNK`` samples (keys ``split(fold_in(key, index),
        NUM_SAMPLES)``, in order) while the next chunk fits ``allowance`` seconds."""
        sampler = window_sampler(estimator, self.task.theta, windows)
        keys = jax.random.split(jax.random.fold_in(self.key, index), NUM_SAMPLES)
        start, chunks, last = time.perf_counter(), [], None
        for c in range(NUM_SAMPLES // _CHUNK):  # a loop over chunks of vmapped samples, each one compiled call
            tick = time.perf_counter()
            chunks.append(jax.block_until_ready(sampler(keys[c * _CHUNK : (c + 1) * _CHUNK])))
            last = time.perf_counter() - tick
            if c == 0:  # how much slower the vmapped samples ran than the timed calls predict
                self.slowdown = max(self.slowdown, (last - compile_guess) / (_CHUNK * per_sample))
            else:
                self.slowdown = max(self.slowdown, last / (_CHUNK * per_sample))
            next_chunk = last if c > 0 else _CHUNK * per_sample * self.slowdown
            if time.perf_counter() - start + next_chunk > allowance or self.clock.left() < next_chunk:
                break
        taken = jax.tree_util.tree_map(lambda *parts: np.concatenate([np.asarray(p) for p in parts]), *chunks)  # host
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference's error is reported once, in the reasons
            return quality_of_windows(taken, self.reference, reference_error=self.error)

    def _checkpoint_memory(self, settings: dict, slots: int) -> int:
        """The compiled memory of `checkpointed_bptt` with `slots` stored states (compiled, not run)."""
        estimator = registry.get("checkpointed-bptt").constructor(
            self.task.system, **{**settings, "memory_budget": slots}
        )
        state = jax.eval_shape(estimator.init, self.task.theta, self.key)
        return compiled_memory(jax.jit(estimator.estimate).lower(self.task.theta, state, self.key).compile())

    def _checkpoint_slots(self, settings: dict) -> tuple[dict, str | None]:
        if self.full_bptt_memory is None:  # full-bptt not measured: the task's settings
            return settings, None
        if 0 <= self.full_bptt_memory <= self.budget:
            return settings, (
                f"full-bptt fits the memory budget ({format_bytes(self.full_bptt_memory)}); checkpointing is "
                "considered only where it does not"
            )
        state_bytes = max(trajectory_sizes(self.task.system, self.task.theta)[0], 1)
        workers = int(settings.get("num_workers", 1))
        horizon = self.task.system.horizon
        # its compiled memory at 1 and 2 slots: what one more slot costs, and what it holds besides its slots
        one, two = (self._checkpoint_memory(settings, slots) for slots in (1, min(2, horizon - 1)))
        per_slot = two - one if two > one else workers * state_bytes
        slots = int((self.budget - (one - per_slot)) // per_slot)
        if slots < 1:
            return settings, (
                f"the budget {format_bytes(self.budget)} leaves no room for a state of {format_bytes(state_bytes)} "
                f"per worker ({workers} workers): checkpointed-bptt compiles to {format_bytes(one)} with one"
            )
        return {**settings, "memory_budget": min(slots, horizon - 1)}, None


def _with_progress(figures: dict) -> dict:
    """``figures`` with the expected progress per call and per second."""
    progress = expected_progress(figures["cosine"], figures["snr"])
    return {**figures, "progress": progress, "progress_per_second": progress / figures["seconds"]}
