"""The advisor's reports: `Advice` (the recommendation, every candidate's `AdviceRow` and the evidence;
rendered by ``to_markdown``, ``to_json`` and ``summary``), `Recommendation`, `Verification` (the race of
``verify``), and ``empty_row``, a row whose figures are not measured."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll import registry
from unroll._errors import BadValue
from unroll.advisor._thresholds import (
    BIAS_TOLERANCE,
    BIAS_Z,
    CHAOS_Z,
    GROWTH_FACTOR,
    NORM_GROWTH,
    REFERENCE_TARGET,
    bias_threshold,
)
from unroll.checkpointing import format_bytes
from unroll.task import Task


class Recommendation(NamedTuple):
    """The recommended estimator, and how to build it (`python`).

    Attributes:
      name: its registry name.
      settings: the keyword arguments its constructor is called with.
      label: the row's label (`AdviceRow.label`).
    """

    name: str
    settings: dict
    label: str

    @property
    def python(self) -> str:
        """The call that builds it, as a line of Python, e.g. ``unroll.pes(system, truncation=20, ...)``."""
        return _python(self.name, self.settings)


class AdviceRow(NamedTuple):
    r"""One candidate at one setting, every figure measured on the task at `task.theta`.

    Figures not measured are NaN (`memory` -1).

    Attributes:
      label: as `unroll compare` spells it (`tbptt-10`), plus the settings that differ from the task's.
      name: the registry name.
      settings: the constructor's keyword arguments.
      family: the registry family (`"bptt"`, `"es"`, ...).
      verdict: `"recommended"`, `"ok"`, the flags that rule it out joined by commas (`"biased"`,
        `"exploding"`, `"over budget"`), `"not applicable"`, `"not measured"` (time) or `"non-finite"`.
      note: why, with the figure.
      seconds: per `estimate` call, compiled (median of repeats).
      system_steps: per call (`info["steps"]`: all workers and particles).
      memory: bytes of the compiled call (arguments + outputs + temporaries - aliased; `compiled_memory`).
      compile_seconds: `init` and `estimate`, traced and compiled.
      measure_seconds: all the time spent on this row.
      span: steps differentiated through (0 for the ES family; `span`).
      windows_per_sample: windows averaged into a sample of `gradient_quality` (covering whole episodes;
        `windows_per_sample`).
      num_samples: the samples of `gradient_quality` taken.
      quality_index: the samples' keys are `split(fold_in(fold_in(key, 3), quality_index), 32)[:num_samples]`.
      bias_z: the largest component's bias in standard errors (the estimator's and the reference's).
      relative_bias: $|m - G| / |G|$, the estimate's expected noise taken out of $|m - G|$.
      cosine: $\cos(m, G)$, the cosine of the mean estimate (`cosine_of_mean`).
      mean_cosine: the mean over samples of each sample's cosine with $G$.
      snr: of one call's estimate, $|m|^2 / V$ (`gradient_quality`'s `window_snr`).
      progress: the expected progress per call, $\max(\cos, 0)^2\, \mathrm{snr} / (1 + \mathrm{snr})$.
      progress_per_second: `progress` divided by `seconds`, the figure candidates are ranked by.
    """

    label: str  # as `unroll compare` spells it (tbptt-10), plus the settings that differ from the task's
    name: str  # registry name
    settings: dict  # the constructor's keyword arguments
    family: str
    verdict: str
    note: str
    seconds: float  # per estimate call, compiled (median of repeats)
    system_steps: int  # per call (info["steps"]: all workers and particles)
    memory: int  # bytes of the compiled call (arguments + outputs + temporaries - aliased)
    compile_seconds: float  # init and estimate, traced and compiled
    measure_seconds: float  # all the time spent on this row
    span: int  # steps differentiated through (0 for the ES family)
    windows_per_sample: int  # windows averaged into a sample of gradient_quality (covering whole episodes)
    num_samples: int
    quality_index: int  # the samples' keys are split(fold_in(fold_in(key, 3), quality_index), 32)[:num_samples]
    bias_z: float
    relative_bias: float
    cosine: float  # cosine_of_mean
    mean_cosine: float
    snr: float  # of one call's estimate (gradient_quality's window_snr)
    progress: float  # max(cosine, 0)^2 snr / (1 + snr)
    progress_per_second: float


class Advice(NamedTuple):
    r"""What `advise` found: the recommendation, every candidate's row and the evidence.

    Attributes:
      task: the task measured.
      recommendation: the `Recommendation`, or `None` when no candidate qualifies (`reasons` says why).
      rows: the `AdviceRow`s, ordered by expected progress per second (measured rows first).
      exponent: $\lambda_1$ per step (mean over trajectories).
      exponent_error: its standard error.
      chaotic: whether the system is chaotic over its horizon ($\lambda_1 > 3\,\mathrm{SE}$ and
        $e^{\lambda_1 T} \ge$ `GROWTH_FACTOR`).
      exploding: whether its BPTT-family gradients explode (chaotic, and the median gradient norm grows at least
        `NORM_GROWTH` times from $h = T/16$ to $h = T$).
      reference: `"exact"` or `"smoothed, sigma=..."`.
      reference_error: the reference's relative standard error $|\mathrm{SE}| / |G|$.
      reference_samples: episodes (exact) or antithetic pairs (smoothed) averaged.
      reference_gradient: $G$, theta's structure.
      reference_standard_error: $G$'s standard error per component, theta's structure.
      reasons: the sentences a person reads, each with its figure.
      skipped: `"label: why"` for each candidate not measured.
      horizons: prefix lengths $h$ of the gradient-norm curve.
      norm_median: median norm over episodes of the exact gradient of the first $h$ steps' mean loss.
      norm_max: the max norm over episodes of the same.
      running: `[trajectories, steps]`: the running $\lambda_1$ estimates.
      seconds: the call's wall time.
      timings: seconds of each phase: `chaos`, `gradient_norms`, `reference`, `candidates`.
      budget: `{"seconds": ..., "memory_budget": bytes}`.
    """

    task: Task
    recommendation: Recommendation | None
    rows: tuple
    exponent: float  # lambda_1 per step (mean over trajectories)
    exponent_error: float  # its standard error
    chaotic: bool
    exploding: bool
    reference: str  # "exact" or "smoothed, sigma=..."
    reference_error: float  # the reference's relative standard error |SE| / |G|
    reference_samples: int  # episodes (exact) or antithetic pairs (smoothed) averaged
    reference_gradient: Any  # G, theta's structure
    reference_standard_error: Any  # G's standard error per component, theta's structure
    reasons: tuple
    skipped: tuple  # "label: why" for each candidate not measured
    horizons: np.ndarray  # prefix lengths h of the gradient-norm curve
    norm_median: np.ndarray  # median norm over episodes of the exact gradient of the first h steps' mean loss
    norm_max: np.ndarray
    running: np.ndarray  # [trajectories, steps]: the running lambda_1 estimates
    seconds: float  # the call's wall time
    timings: dict  # seconds of each phase: chaos, gradient_norms, reference, candidates
    budget: dict  # {"seconds": ..., "memory_budget": bytes}

    def estimator(self):
        """The recommendation built on `task.system`.

        Returns:
          The recommended estimator.

        Raises:
          BadValue: there is no recommendation (a `ValueError`; the message says why).
        """
        if self.recommendation is None:
            raise BadValue(self.reasons[-1])  # "No recommendation: ..., the figure"
        entry = registry.get(self.recommendation.name)
        return entry.constructor(self.task.system, **self.recommendation.settings)

    def to_json(self) -> str:
        """Everything but the task and the reference gradient (its norm is there), as JSON.

        Returns:
          The JSON text, indented; non-finite figures as the strings `"inf"`/`"nan"`.
        """
        return json.dumps(_jsonable(self._data()), indent=2)

    def _data(self) -> dict:
        return {
            "task": self.task.name,
            "horizon": self.task.system.horizon,
            "recommendation": None
            if self.recommendation is None
            else {**self.recommendation._asdict(), "python": self.recommendation.python},
            "exponent": self.exponent,
            "exponent_error": self.exponent_error,
            "chaotic": self.chaotic,
            "exploding": self.exploding,
            "reference": self.reference,
            "reference_error": self.reference_error,
            "reference_samples": self.reference_samples,
            "reference_norm": float(np.linalg.norm(ravel_pytree(self.reference_gradient)[0])),
            "reasons": list(self.reasons),
            "skipped": list(self.skipped),
            "gradient_norms": {
                "horizons": self.horizons.tolist(),
                "median": self.norm_median.tolist(),
                "max": self.norm_max.tolist(),
            },
            "rows": [row._asdict() for row in self.rows],
            "seconds": self.seconds,
            "timings": self.timings,
            "budget": self.budget,
            "thresholds": {
                "bias_z": BIAS_Z,
                "bias_z_family_wise": bias_threshold(ravel_pytree(self.task.theta)[0].size),
                "bias_tolerance": BIAS_TOLERANCE,
                "growth_factor": GROWTH_FACTOR,
                "norm_growth": NORM_GROWTH,
                "chaos_z": CHAOS_Z,
                "reference_target": REFERENCE_TARGET,
            },
        }

    def to_markdown(self, plots: dict | None = None) -> str:
        """The report: the recommendation as a line of Python, the reasons, the table of every candidate, the plots.

        Args:
          plots: `{caption: path}` of images to include (e.g. `unroll.plotting.plot_advice`'s), or `None`.

        Returns:
          The markdown text.
        """
        lines = [f"# Advice for {self.task.name} (horizon {self.task.system.horizon})", ""]
        if self.recommendation is not None:
            lines += ["Recommended:", "", "```python", self.recommendation.python, "```", ""]
        else:
            lines += ["**No recommendation** (see the reasons).", ""]
        lines += [f"* {reason}" for reason in self.reasons] + [""]
        lines += [
            "| candidate | verdict | progress / s | cosine | SNR / call | bias z | relative bias | s / call "
            "| system steps / call | memory | note |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in self.rows:
            memory = format_bytes(row.memory) if row.memory >= 0 else "-"
            lines.append(
                f"| {row.label} | {row.verdict} | {_g(row.progress_per_second)} | {_f(row.cosine)} | {_g(row.snr)} | "
                f"{_g(row.bias_z)} | {_g(row.relative_bias)} | {_g(row.seconds)} | {row.system_steps or '-'} | "
                f"{memory} | {row.note} |"
            )
        if self.skipped:
            names = ", ".join(item.split(": ", 1)[0] for item in self.skipped)
            lines += ["", f"Not measured in the time given (the table says why): {names}."]
        for caption, path in (plots or {}).items():
            lines += ["", f"![{caption}]({path})"]
        budget = self.budget
        lines += [
            "",
            f"Measured in {self.seconds:.1f} s of a {budget['seconds']:g} s budget, memory budget "
            f"{format_bytes(budget['memory_budget'])}; thresholds: bias z > "
            f"{bias_threshold(ravel_pytree(self.task.theta)[0].size):.3g} ({BIAS_Z:g} made family-wise over theta's "
            f"{ravel_pytree(self.task.theta)[0].size} components) and relative bias > "
            f"{BIAS_TOLERANCE:g}; chaotic when lambda_1 > {CHAOS_Z:g} SE and exp(lambda_1 T) >= {GROWTH_FACTOR:g}.",
        ]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        """A few lines for the terminal: the recommendation (or why there is none) and the top rows.

        Returns:
          The text, lines joined by newlines.
        """
        measured = [row for row in self.rows if math.isfinite(row.progress_per_second)][:5]
        lines = [f"{self.task.name}: " + self.reasons[0]]
        for row in measured:
            lines.append(
                f"  {row.label:<28s} {row.verdict:<22s} progress/s {_g(row.progress_per_second):>9s}  "
                f"cos {_f(row.cosine)}  snr {_g(row.snr)}  {_g(row.seconds)} s/call"
            )
        if self.recommendation is not None:
            lines.append("recommended: " + self.recommendation.python)
        else:
            lines.append(self.reasons[-1])  # "No recommendation: ..."
        return "\n".join(lines)


def _f(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def _g(value: float) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return f"{value:.3g}"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(value).tolist())
    return value


def _python(name: str, settings: dict) -> str:
    entry = registry.get(name)
    order = [p for p in entry.parameters if p in settings]
    arguments = ", ".join(f"{key}={settings[key]!r}" for key in order)
    return f"unroll.{entry.constructor.__name__}(system, {arguments})"


def empty_row(label, name, settings, verdict, note, **figures) -> AdviceRow:
    """An `AdviceRow` whose figures are NaN (`memory` -1) but those given in `figures`."""
    nan = float("nan")
    values = dict(
        label=label,
        name=name,
        settings=settings,
        family=registry.get(name).family,
        verdict=verdict,
        note=note,
        seconds=nan,
        system_steps=0,
        memory=-1,
        compile_seconds=nan,
        measure_seconds=0.0,
        span=0,
        windows_per_sample=0,
        num_samples=0,
        quality_index=-1,
        bias_z=nan,
        relative_bias=nan,
        cosine=nan,
        mean_cosine=nan,
        snr=nan,
        progress=nan,
        progress_per_second=nan,
    )
    values.update(figures)
    return AdviceRow(**values)


class Verification(NamedTuple):
    """The race of `verify`, and whether its winner is the recommendation.

    Attributes:
      raced: the labels raced, best expected first.
      winner: the race's winner (lowest final objective, mean over seeds).
      objectives: each label's final objective, mean over seeds.
      agrees: whether the winner is the recommendation.
      out_dir: the comparison's folder.
      text: a sentence that says it.
    """

    raced: tuple
    winner: str
    objectives: dict
    agrees: bool
    out_dir: str
    text: str
