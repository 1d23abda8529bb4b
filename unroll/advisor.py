r"""Which estimator suits a system: ``unroll.advise`` measures the system and every
candidate estimator on it, and recommends one with the evidence.

```python
advice = unroll.advise(task, seconds=120, memory_budget="64MiB")
print(advice.to_markdown())
estimator = advice.estimator()  # the recommendation, built on task.system
```

What it measures, all at ``task.theta``:

1. **Chaos.** The leading Lyapunov exponent $\lambda_1$ per step (``lyapunov_spectrum``,
   ``NUM_TRAJECTORIES`` independent trajectories: their mean and standard error), and the
   exact gradient of the mean loss over the first $h$ steps of an episode for $h = T, T/2,
   \dots, T/64$ (median and max norm over ``NUM_EPISODES`` episodes). The system is
   **chaotic over its horizon** when $\lambda_1 > 3\,\mathrm{SE}$ and $e^{\lambda_1 T} \ge$
   ``GROWTH_FACTOR`` (100); its BPTT-family gradients **explode** when, besides, the measured
   median gradient norm grows at least ``NORM_GROWTH`` (10) times from $h = T/16$ to $h = T$.
2. **A reference gradient** $G$: the exact one averaged over episodes until its relative
   standard error is ``REFERENCE_TARGET`` (5%) or its share of the time is spent, where the
   system is not chaotic; otherwise the gradient of the Gaussian-smoothed loss
   $\nabla_\theta \mathbb E_\epsilon L(\theta + \sigma \epsilon)$ at the task's $\sigma$, from
   antithetic ES pairs over whole episodes (the exact gradient of a chaotic system is noise:
   its variance grows like $e^{2 \lambda_1 T}$).
3. **Candidates**, from the registry: every estimator at the task's settings, then a grid
   (truncations $T/10$ and $T/100$; a quarter of the ES family's particles and, off chaos, a
   quarter of its $\sigma$). ``parallel-bptt`` needs ``system.episode``; ``deer`` and
   ``quasi-deer`` run only where ``outlook_from_exponent`` expects them fast; ``rtrl``/``snap``
   only where their influence matrix fits ``memory_budget``; ``checkpointed-bptt`` only where
   ``full-bptt``'s compiled memory is over it, with the slots the budget allows.
4. **Per candidate:** compiled seconds per ``estimate`` call (median of repeats), system
   steps per call, compiled memory (XLA's memory analysis: arguments, outputs and
   temporaries), and against $G$ (``gradient_quality``, each sample's windows covering whole
   episodes): the bias in standard errors (counting $G$'s own), its relative size, the cosine
   of the mean and the SNR of one call's estimate.
5. **The rank.** One SGD step at its best step size along an estimate with mean $m$ and
   total variance $V$ lowers the loss by about $\langle G, m\rangle^2 / (2 L (|m|^2 + V))$;
   divided by $|G|^2 / 2L$ that is $\max(\cos(m, G), 0)^2 \cdot \mathrm{snr} / (1 +
   \mathrm{snr})$, $\mathrm{snr} = |m|^2 / V$, per call. Divided by the seconds per call it is
   the **expected progress per second**, the figure candidates are ranked by.

   * **biased**: $z > z_p$ (``bias_threshold``: ``BIAS_Z`` = 4 standard errors, counting $G$'s
     own, made family-wise over theta's $p$ components, $z_p = -\Phi^{-1}(\Phi(-4) / p)$: 4 at
     $p = 1$, 5.5 at $p = 1300$) and $|m - G| / |G| > $ ``BIAS_TOLERANCE`` (0.2, the estimate's
     expected noise taken out of $|m - G|$). The
     relative bias and not the cosine alone: a truncated gradient may point along $G$ and yet
     be a twentieth of it (its optimum lies elsewhere; lr-schedule's ``tbptt-10``), and a
     scalar theta's cosine is always $\pm 1$. Within 0.2, $\cos \ge 0.98$ and $\langle G, m
     \rangle \ge 0.8 |G|^2$.
   * **exploding**: the system's gradients explode and the candidate differentiates through
     a span $K$ (its window, or the whole episode) with $e^{\lambda_1 K} \ge$ ``GROWTH_FACTOR``.
     The ES family differentiates through nothing.
   * **over budget**: compiled memory over ``memory_budget``.

   The recommendation is the unflagged candidate of most expected progress per second.

The whole call keeps to ``seconds``: the candidates' measurements shrink (fewer samples),
then candidates are skipped, and the report says which.

Where the rule can be wrong: it measures at ``task.theta`` only (a truncation's bias may be
small there and large near the optimum), the SGD model ignores curvature and adaptivity
(Adam rescales the step), window estimates along one trajectory are correlated (SGD sees
less of the SNR than the independent-window figure says), and seconds are this machine's.
``verify(advice)`` (``unroll advise --verify``) races the top three to check.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll import registry
from unroll._errors import BadType, BadValue
from unroll._exact import episode_loss
from unroll.checkpointing import format_bytes
from unroll.diagnostics import lyapunov_spectrum, outlook_from_exponent, quality_of_windows, window_sampler
from unroll.task import Task, check_memory_limit, memory_models, trajectory_sizes

__all__ = [
    "BIAS_TOLERANCE",
    "BIAS_Z",
    "CHAOS_Z",
    "GROWTH_FACTOR",
    "MIN_SECONDS",
    "NORM_GROWTH",
    "NUM_EPISODES",
    "NUM_TRAJECTORIES",
    "ORDER",
    "REFERENCE_SHARE",
    "REFERENCE_TARGET",
    "REPEATS",
    "Advice",
    "AdviceRow",
    "advise",
    "bias_threshold",
    "compiled_memory",
    "exact_episodes",
    "Recommendation",
    "span",
    "Verification",
    "verify",
    "windows_per_sample",
]

# the rule's thresholds: judgements, stated in the docs and tested on the built-in tasks
BIAS_Z = 4.0  # a bias is significant beyond this many standard errors (the estimator's and the reference's)
BIAS_TOLERANCE = 0.2  # ... and harmful beyond this relative size |m - G| / |G|
GROWTH_FACTOR = 100.0  # chaotic over a span K when perturbations grow by exp(lambda_1 K) >= this
NORM_GROWTH = 10.0  # the exact gradient's median norm must grow this much from T/16 to T to confirm explosion
CHAOS_Z = 3.0  # lambda_1 must lie this many standard errors above 0
REFERENCE_TARGET = 0.05  # the reference's relative standard error |SE| / |G| aimed at
REFERENCE_SHARE = 0.2  # at most this share of `seconds` goes into the reference
MIN_SECONDS = 10.0  # below this not even the system's measurements compile on a CPU
NUM_TRAJECTORIES = 8  # Lyapunov trajectories (mean and standard error of lambda_1)
NUM_EPISODES = 8  # episodes of the gradient-norm-against-horizon curve
NUM_SAMPLES, CHUNK = 32, 8  # gradient_quality samples per candidate, taken CHUNK at a time while time allows
REPEATS = 5  # timed calls per candidate (the median is reported)

# the order candidates are measured in (the first pass: each at the task's settings); an estimator registered
# later and not named here comes after these, in the registry's order
ORDER = (
    "full-bptt",
    "parallel-bptt",
    "tbptt",
    "rtrl",
    "pes",
    "nres",
    "es",
    "uoro",
    "forward",
    "snap",
    "tes",
    "dni",
    "gpes",
    "deer",
    "quasi-deer",
    "checkpointed-bptt",
)


def _order() -> list[str]:
    return [name for name in ORDER if name in registry.ESTIMATORS] + [
        name for name in registry.ESTIMATORS if name not in ORDER
    ]


def exact_episodes(name: str) -> bool:
    """Whether `name` computes the exact gradient of whole episodes.

    These are the BPTT family's estimators without a window (full, parallel, DEER, checkpointed).
    From the same workers they give the same estimate (their tests prove parallel == sequential ==
    checkpointed), so their bias, cosine and SNR are measured once and shared; they differ in
    seconds and memory.

    Args:
      name: a registry name.

    Returns:
      True for a BPTT-family estimator that is not windowed.
    """
    entry = registry.get(name)
    return entry.family == "bptt" and not entry.windowed


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


def bias_threshold(num_components: int) -> float:
    r"""The bias z beyond which a bias is significant, made family-wise over theta's components.

    `BIAS_Z` standard errors $z_1$ for one component, made family-wise over `num_components`
    (Bonferroni),

    $$
    z_p = -\Phi^{-1}\left(\Phi(-z_1) / p\right),
    $$

    so that the chance that the largest of $p$ unbiased components' $|z|$ passes it is that of
    one passing 4. (`gradient_quality`'s `bias_z` is the largest over the components.)

    Args:
      num_components: $p$, the floats in theta.

    Returns:
      $z_p$, a float (4 at $p = 1$).
    """
    from statistics import NormalDist

    normal = NormalDist()
    return -normal.inv_cdf(normal.cdf(-BIAS_Z) / max(int(num_components), 1))


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


class _Clock:
    """The time left of the call's budget."""

    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.seconds = seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


class _Candidate(NamedTuple):
    label: str
    name: str
    settings: dict  # constructor keyword arguments
    first_pass: bool


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


def _parse_candidates(candidates, task: Task) -> list[tuple[str, int | None, bool]]:
    """``[(registry name, truncation or None, fixed)]``: ``fixed`` when the name carried ``-K``."""
    if candidates is None:
        return [(name, None, False) for name in _order()]
    if isinstance(candidates, str) or not all(isinstance(c, str) for c in candidates):
        raise BadType(f"`candidates` must be a list of estimator names, e.g. ['pes', 'tbptt-10'], got {candidates!r}.")
    parsed = []
    for text in candidates:
        match = re.fullmatch(r"([a-z][a-z-]*?)(?:-(\d+))?", text)
        name = match.group(1) if match else text
        if not match or name not in registry.ESTIMATORS:
            raise BadValue(
                f"unknown candidate {text!r}; choose from {', '.join(registry.ESTIMATORS)} (add -K for a "
                "truncation, e.g. tbptt-10)."
            )
        truncation = match.group(2)
        if truncation is not None:
            if not registry.get(name).windowed:
                raise BadValue(f"candidate {text!r}: {name} takes no truncation; write {name!r}.")
            truncation = int(truncation)
            if not 1 <= truncation <= task.system.horizon:
                raise BadValue(
                    f"candidate {text!r}: truncation {truncation} must lie in [1, horizon={task.system.horizon}]."
                )
        parsed.append((name, truncation, truncation is not None))
    return parsed


def _label(name: str, settings: dict, task: Task) -> str:
    label = f"{name}-{settings['truncation']}" if "truncation" in settings else name
    base = registry.constructor_settings(name, **task.settings)
    extra = [
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in settings.items()
        if key not in ("truncation", "memory_budget") and base.get(key) != value
    ]
    return " ".join([label, *extra])


def _variants(name: str, truncation: int | None, fixed: bool, task: Task, chaotic: bool) -> list[tuple[dict, bool]]:
    """``[(overrides, first pass)]``: the task's settings, then the grid."""
    horizon = task.system.horizon
    entry = registry.get(name)
    base = {} if truncation is None else {"truncation": truncation}
    out = [(base, True)]
    if fixed:
        return out
    own = truncation if truncation is not None else task.settings["truncation"]
    task_truncation = task.settings["truncation"]
    if name == "tbptt":
        for k in dict.fromkeys((horizon // 10, horizon // 100)):
            if 1 <= k != own:
                out.append(({"truncation": k}, False))
    if name in ("pes", "nres") and horizon // 10 > task_truncation:
        out.append(({"truncation": horizon // 10}, False))
    if name in ("pes", "nres", "es") and entry.family == "es":
        particles = task.settings["num_particles"]
        quarter = max(2, (particles // 4) // 2 * 2)
        if quarter < particles:
            out.append(({"num_particles": quarter}, False))
        if not chaotic:
            out.append(({"sigma": task.settings["sigma"] / 4}, False))
    return out


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
    parsed = _parse_candidates(candidates, task)
    key = _key(key)
    clock = _Clock(seconds)
    system, theta = task.system, task.theta

    timings = {}
    tick = time.perf_counter()
    running = _lyapunov(system, theta, jax.random.fold_in(key, 0))
    timings["chaos"] = time.perf_counter() - tick
    finals = running[:, -1]
    exponent = float(np.mean(finals))
    exponent_error = float(np.std(finals, ddof=1) / math.sqrt(len(finals)))
    tick = time.perf_counter()
    horizons, norms = _horizon_norms(system, theta, jax.random.fold_in(key, 1))
    timings["gradient_norms"] = time.perf_counter() - tick
    norm_median, norm_max = np.median(norms, axis=0), np.max(norms, axis=0)
    horizon = system.horizon
    chaotic = bool(
        not math.isfinite(exponent)
        or (exponent > CHAOS_Z * exponent_error and exponent * horizon >= math.log(GROWTH_FACTOR))
    )
    growth = _growth(horizons, norm_median)
    exploding = bool(chaotic and (growth >= NORM_GROWTH or not math.isfinite(growth)))
    reasons = [_chaos_reason(exponent, exponent_error, horizon, chaotic, running.shape)]
    reasons.append(_growth_reason(horizons, norm_median, growth, chaotic, exploding))

    sigma = float(task.settings["sigma"])
    share = min(REFERENCE_SHARE * seconds, max(clock.left() - 2.0, 1.0))
    tick = time.perf_counter()
    if chaotic:
        reference, error, count = _smoothed_reference(system, theta, jax.random.fold_in(key, 2), sigma, share)
        reference_kind = f"smoothed, sigma={sigma:g}"
    else:
        reference, error, count = _exact_reference(system, theta, jax.random.fold_in(key, 2), share)
        reference_kind = "exact"
    timings["reference"] = time.perf_counter() - tick
    reference_norm = float(np.linalg.norm(ravel_pytree(reference)[0]))
    relative_error = float(np.linalg.norm(ravel_pytree(error)[0])) / reference_norm if reference_norm > 0 else 0.0
    reasons.append(_reference_reason(reference_kind, count, relative_error, chaotic, exponent, horizon))

    candidate_list, not_applicable = _candidates(task, parsed, chaotic, exponent, budget, grid)
    if not candidate_list and not not_applicable:
        raise BadValue("no candidate to measure; pass at least one registered estimator in `candidates`.")
    first_cost = 3.0  # seconds: a guess at one candidate's compile and measurement until one is measured
    if clock.left() < first_cost:
        raise BadValue(
            f"`seconds`={seconds:g} leaves no time for a candidate: the system's measurements (chaos, gradient "
            f"norms, reference) took {clock.elapsed():.1f} s and one candidate takes about {first_cost:g} s more; "
            f"pass seconds >= {math.ceil(clock.elapsed() + 4 * first_cost)}."
        )
    measure = _Measure(task, reference, error, jax.random.fold_in(key, 3), clock, budget, exploding, exponent)
    full_model = memory_models(system, theta, task.settings)["full-bptt"]
    if full_model > budget:  # full-bptt is not compiled: checkpointed-bptt stands in
        measure.full_bptt_memory = full_model
    rows = list(not_applicable)
    tick = time.perf_counter()
    rows += measure.all(candidate_list, progress)
    timings["candidates"] = time.perf_counter() - tick
    rows = _ranked(rows)
    recommendation = None
    best = next((row for row in rows if row.verdict == "ok" and row.progress_per_second > 0), None)
    if best is not None:
        recommendation = Recommendation(best.name, best.settings, best.label)
        rows = [row._replace(verdict="recommended") if row is best else row for row in rows]
    reasons += _verdict_reasons(rows, best, budget, task)
    skipped = tuple(f"{row.label}: {row.note}" for row in rows if row.verdict == "not measured")
    return Advice(
        task=task,
        recommendation=recommendation,
        rows=tuple(rows),
        exponent=exponent,
        exponent_error=exponent_error,
        chaotic=chaotic,
        exploding=exploding,
        reference=reference_kind,
        reference_error=relative_error,
        reference_samples=count,
        reference_gradient=reference,
        reference_standard_error=error,
        reasons=tuple(reasons),
        skipped=skipped,
        horizons=np.asarray(horizons),
        norm_median=norm_median,
        norm_max=norm_max,
        running=running,
        seconds=clock.elapsed(),
        timings=timings,
        budget={"seconds": seconds, "memory_budget": budget},
    )


def _key(key: Any) -> jax.Array:
    if key is None:
        return jax.random.key(0)
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raise BadType(f"`key` must be an int seed or a JAX key (jax.random.key(0)), got {key!r}.")


def _lyapunov(system, theta, key) -> np.ndarray:
    """``[NUM_TRAJECTORIES, steps]`` running estimates of lambda_1 (per step) from independent starts."""
    horizon = system.horizon
    num_steps = int(min(max(2 * horizon, 500), 4000))
    warmup = int(min(horizon, 500))
    measure = lambda k: lyapunov_spectrum(system, theta, k, num_steps, k=1, warmup=warmup).running[:, 0]
    return np.asarray(jax.jit(jax.vmap(measure))(jax.random.split(key, NUM_TRAJECTORIES)), np.float64)


def _horizons(horizon: int) -> list[int]:
    return sorted({max(1, horizon // 2**j) for j in range(7)})


def _horizon_norms(system, theta, key) -> tuple[list[int], np.ndarray]:
    """The norm of the exact gradient of the mean loss over the first ``h`` steps of an episode, for
    each ``h`` of ``_horizons``: ``[NUM_EPISODES, len(horizons)]``. One forward pass per episode and a
    vmapped backward pass per ``h`` (``jax.jacrev``)."""
    horizon = system.horizon
    horizons = _horizons(horizon)
    weights = np.zeros((len(horizons), horizon))
    for i, h in enumerate(horizons):
        weights[i, :h] = 1.0 / h

    def prefix_means(theta, key):
        _, losses = jax.lax.scan(
            lambda state, t: system.step(theta, state, t),
            system.init(theta, key),
            jnp.arange(horizon, dtype=jnp.int32),
        )
        return jnp.asarray(weights, losses.dtype) @ losses

    def norms(key):
        jacobian = jax.jacrev(prefix_means)(theta, key)
        squares = [
            jnp.sum(leaf.reshape(len(horizons), -1) ** 2, axis=1) for leaf in jax.tree_util.tree_leaves(jacobian)
        ]
        return jnp.sqrt(sum(squares))

    keys = jax.random.split(key, NUM_EPISODES)
    return horizons, np.asarray(jax.jit(jax.vmap(norms))(keys), np.float64)


def _growth(horizons: list[int], median: np.ndarray) -> float:
    """The median norm at ``T`` over that at ``T / 16``."""
    start = horizons.index(max(1, horizons[-1] // 16))
    top, bottom = float(median[-1]), float(median[start])
    if bottom > 0:
        return top / bottom
    return 1.0 if top == 0 else float("inf")


class _Running(NamedTuple):
    """Chan et al.'s pairwise update of a mean and sum of squared deviations (float64)."""

    count: int
    mean: np.ndarray
    m2: np.ndarray

    def add(self, batch: np.ndarray) -> _Running:
        n, mean = batch.shape[0], batch.mean(axis=0)
        m2 = ((batch - mean) ** 2).sum(axis=0)
        if self.count == 0:
            return _Running(n, mean, m2)
        total = self.count + n
        delta = mean - self.mean
        return _Running(total, self.mean + delta * n / total, self.m2 + m2 + delta**2 * self.count * n / total)

    def error(self) -> np.ndarray:
        return np.sqrt(self.m2 / (self.count - 1) / self.count)


def _averaged(sample_batch, key, seconds: float, batch: int = 16, max_batches: int = 256):
    """Batches of samples until the mean's relative standard error is ``REFERENCE_TARGET``, ``seconds``
    are spent (after two batches) or ``max_batches``; ``(mean, standard error, count)`` flat, float64."""
    start = time.perf_counter()
    stats = _Running(0, np.zeros(0), np.zeros(0))
    for b in range(max_batches):  # a loop over batches of vmapped episodes, each one compiled call
        flat = np.asarray(sample_batch(jax.random.split(jax.random.fold_in(key, b), batch)), np.float64)
        stats = stats.add(flat)
        if b >= 1:
            norm = np.linalg.norm(stats.mean)
            relative = np.linalg.norm(stats.error()) / norm if norm > 0 else 0.0
            if relative <= REFERENCE_TARGET or time.perf_counter() - start >= seconds:
                break
    return stats.mean, stats.error(), stats.count


def _exact_reference(system, theta, key, seconds: float):
    flat, unravel = ravel_pytree(theta)
    gradient = jax.jit(jax.vmap(lambda k: ravel_pytree(jax.grad(lambda th: episode_loss(system, th, k))(theta))[0]))
    mean, error, count = _averaged(gradient, key, seconds)
    return unravel(jnp.asarray(mean, flat.dtype)), unravel(jnp.asarray(error, flat.dtype)), count


def _smoothed_reference(system, theta, key, sigma: float, seconds: float):
    """$\\nabla \\mathbb E_\\epsilon L(\\theta + \\sigma \\epsilon)$ from antithetic pairs over whole episodes,
    ``(L(theta + sigma eps) - L(theta - sigma eps)) / (2 sigma) eps``, both on one episode key."""
    flat, unravel = ravel_pytree(theta)

    def pair(k):
        noise_key, episode_key = jax.random.split(k)
        eps = jax.random.normal(noise_key, flat.shape, flat.dtype)
        plus = episode_loss(system, unravel(flat + sigma * eps), episode_key)
        minus = episode_loss(system, unravel(flat - sigma * eps), episode_key)
        return (plus - minus) / (2 * sigma) * eps

    mean, error, count = _averaged(jax.jit(jax.vmap(pair)), key, seconds, batch=64)
    return unravel(jnp.asarray(mean, flat.dtype)), unravel(jnp.asarray(error, flat.dtype)), count


def _candidates(task: Task, parsed, chaotic: bool, exponent: float, budget: int, grid: bool = True):
    """The candidates to measure, in order (every first-pass one before the grid), and the rows of
    those that do not apply to this system."""
    system = task.system
    models = memory_models(system, task.theta, task.settings)
    first, around, rows, seen = [], [], [], set()
    for name, truncation, fixed in parsed:
        why = _not_applicable(name, system, exponent, models, budget)
        for overrides, first_pass in _variants(name, truncation, fixed or not grid, task, chaotic):
            settings = registry.constructor_settings(name, **{**task.settings, **overrides})
            label = _label(name, settings, task)
            if label in seen:
                continue
            seen.add(label)
            if why is not None:
                rows.append(_empty_row(label, name, settings, "not applicable", why))
                break
            modelled = memory_models(system, task.theta, {**task.settings, **overrides})
            over = _over_model(name, modelled, budget)
            if over is not None:
                rows.append(_empty_row(label, name, settings, "over budget", over, memory=modelled[name]))
                continue
            (first if first_pass else around).append(_Candidate(label, name, settings, first_pass))
    return first + around, rows


def _over_model(name: str, models: dict, budget: int) -> str | None:
    """Why ``name`` is over the budget by ``estimator_memory``'s model alone (not compiled), or None."""
    if name in models and models[name] > budget and name != "checkpointed-bptt":
        what = "its influence matrix" if name in ("rtrl", "snap") else "it"
        return (
            f"{what} needs about {format_bytes(models[name])} (estimator_memory's model; not compiled), over the "
            f"memory budget of {format_bytes(budget)}"
        )
    return None


def _not_applicable(name: str, system, exponent: float, models: dict, budget: int) -> str | None:
    if name == "parallel-bptt" and getattr(system, "episode", None) is None:
        return "needs system.episode (the parallel form)"
    if name in ("deer", "quasi-deer"):
        outlook = outlook_from_exponent(exponent, system.horizon, name) if math.isfinite(exponent) else None
        if outlook is None or not outlook.expected_fast:
            return "parallel_outlook: " + (outlook.rule if outlook else "lambda_1 is not finite")
    return None


def _empty_row(label, name, settings, verdict, note, **figures) -> AdviceRow:
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


class _Measure:
    """Measures candidates in order within the clock's time."""

    def __init__(self, task, reference, error, key, clock, budget, exploding, exponent):
        self.task, self.reference, self.error, self.key = task, reference, error, key
        self.clock, self.budget, self.exploding, self.exponent = clock, budget, exploding, exponent
        self.compile_times: list[float] = []
        self.index = 0
        self.full_bptt_memory: int | None = None
        self.full_bptt_compiled = False
        self.bias_threshold = bias_threshold(ravel_pytree(task.theta)[0].size)
        self.slowdown = 1.5  # gradient_quality's samples against the timed calls (measured as it goes)
        self.exact_quality: dict[int, tuple] = {}  # num_workers -> (label, quality figures, flags)

    def all(self, candidates: list[_Candidate], progress: bool) -> list[AdviceRow]:
        from unroll._progress import progress as bar

        rows = []
        first_left = sum(c.first_pass for c in candidates)
        for i in bar(len(candidates), "advise: candidates", enabled=progress):
            candidate = candidates[i]
            first_left -= candidate.first_pass
            share = self.clock.left() / max(1, (first_left + 1) if candidate.first_pass else len(candidates) - i)
            rows.append(self.one(candidate, share))
        return rows

    def compile_estimate(self) -> float:
        return float(np.mean(self.compile_times)) if self.compile_times else 2.0

    def one(self, candidate: _Candidate, share: float) -> AdviceRow:
        start = time.perf_counter()
        row = self._one(candidate, share)
        return row._replace(measure_seconds=time.perf_counter() - start)

    def _one(self, candidate: _Candidate, share: float) -> AdviceRow:
        task, name, settings = self.task, candidate.name, dict(candidate.settings)
        horizon = task.system.horizon
        if name == "checkpointed-bptt":
            settings, why = self._checkpoint_slots(settings)
            if why is not None:
                return _empty_row(candidate.label, name, settings, "not applicable", why)
        needed = 2.5 * self.compile_estimate()  # init and estimate, then gradient_quality's compile, then its run
        if self.clock.left() < needed:
            return _empty_row(
                candidate.label,
                name,
                settings,
                "not measured",
                f"time: {max(self.clock.left(), 0):.1f} s left, about {needed:.1f} s needed to compile and measure it",
            )
        try:
            estimator = registry.get(name).constructor(task.system, **settings)
        except (TypeError, ValueError) as err:
            return _empty_row(candidate.label, name, settings, "not applicable", str(err).splitlines()[0])
        start = time.perf_counter()
        init = jax.jit(estimator.init)
        key = jax.random.fold_in(self.key, 1_000_000 + self.index)
        state = init(task.theta, key)
        compiled = jax.jit(estimator.estimate).lower(task.theta, state, key).compile()
        memory = compiled_memory(compiled)
        _, state, info = jax.block_until_ready(compiled(task.theta, state, key))
        compile_seconds = time.perf_counter() - start
        self.compile_times.append(compile_seconds)
        times = []
        for r in range(REPEATS):  # timed calls of the compiled window (no Python loop over steps)
            tick = time.perf_counter()
            _, state, info = jax.block_until_ready(compiled(task.theta, state, jax.random.fold_in(key, r + 1)))
            times.append(time.perf_counter() - tick)
        seconds = float(np.median(times))
        steps = int(info["steps"])
        differentiated = span(name, settings, horizon)
        if name == "full-bptt":
            self.full_bptt_memory, self.full_bptt_compiled = memory, True
        figures = dict(
            seconds=seconds, system_steps=steps, memory=memory, compile_seconds=compile_seconds, span=differentiated
        )
        flags, notes = [], []
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
        if "over budget" in flags:
            return _empty_row(candidate.label, name, settings, ", ".join(flags), "; ".join(notes), **figures)
        windows = (
            1
            if "truncation" not in settings
            else windows_per_sample(horizon, int(settings["truncation"]), int(settings.get("num_workers", 1)))
        )
        shared = self.exact_quality.get(int(settings.get("num_workers", 1))) if exact_episodes(name) else None
        if shared is not None:  # the same estimate: its quality, measured on the first exact one
            label, quality_figures, quality_flags = shared
            figures.update(quality_figures)
            flags += quality_flags
            progress = max(figures["cosine"], 0.0) ** 2 * _fraction(figures["snr"])
            figures.update(progress=progress, progress_per_second=progress / seconds)
            notes.append(f"the same exact estimate as {label}: its bias, cosine and SNR")
            return _empty_row(candidate.label, name, settings, ", ".join(flags) or "ok", "; ".join(notes), **figures)
        per_sample = windows * seconds
        quality_compile = 1.2 * self.compile_estimate()
        allowance = min(share, self.clock.left())
        if quality_compile + CHUNK * per_sample * self.slowdown > allowance:
            allowance = self.clock.left()  # over its share of the time, within the whole budget
        if quality_compile + CHUNK * per_sample * self.slowdown > allowance:
            need = quality_compile + CHUNK * per_sample * self.slowdown
            note = (
                f"time: {CHUNK} samples of {windows} window(s) at {seconds:.3g} s need about {need:.1f} s, "
                f"{max(self.clock.left(), 0):.1f} s left"
            )
            return _empty_row(candidate.label, name, settings, ", ".join(flags) or "not measured", note, **figures)
        index = self.index
        self.index += 1
        quality = self._quality(estimator, windows, index, allowance, quality_compile, per_sample)
        samples = quality.samples.shape[0]
        figures.update(
            windows_per_sample=windows,
            num_samples=samples,
            quality_index=index,
            bias_z=quality.bias_z,
            relative_bias=quality.relative_bias,
            cosine=quality.cosine_of_mean,
            mean_cosine=quality.mean_cosine,
            snr=quality.window_snr,
        )
        quality_flags = []
        if not np.all(np.isfinite(np.asarray(quality.samples))):
            quality_flags.append("non-finite")
            notes.append("some estimates are not finite")
        elif quality.bias_z > self.bias_threshold and quality.relative_bias > BIAS_TOLERANCE:
            quality_flags.append("biased")
            notes.append(f"bias {quality.bias_z:.3g} standard errors, {quality.relative_bias:.2f} of |G|")
        flags += quality_flags
        if exact_episodes(name):
            keep = ("windows_per_sample", "num_samples", "quality_index", "bias_z", "relative_bias", "cosine")
            keep += ("mean_cosine", "snr")
            record = (candidate.label, {k: figures[k] for k in keep}, quality_flags)
            self.exact_quality[int(settings.get("num_workers", 1))] = record
        progress = max(quality.cosine_of_mean, 0.0) ** 2 * _fraction(quality.window_snr)
        figures.update(progress=progress, progress_per_second=progress / seconds)
        if not flags:
            notes.append(f"{samples} samples of {windows} window(s)")
        return _empty_row(candidate.label, name, settings, ", ".join(flags) or "ok", "; ".join(notes), **figures)

    def _quality(self, estimator, windows: int, index: int, allowance: float, compile_guess: float, per_sample):
        """``gradient_quality`` in chunks of ``CHUNK`` samples (keys ``split(fold_in(key, index),
        NUM_SAMPLES)``, in order) while the next chunk fits ``allowance`` seconds."""
        sampler = window_sampler(estimator, self.task.theta, windows)
        keys = jax.random.split(jax.random.fold_in(self.key, index), NUM_SAMPLES)
        start, chunks, last = time.perf_counter(), [], None
        for c in range(NUM_SAMPLES // CHUNK):  # a loop over chunks of vmapped samples, each one compiled call
            tick = time.perf_counter()
            chunks.append(jax.block_until_ready(sampler(keys[c * CHUNK : (c + 1) * CHUNK])))
            last = time.perf_counter() - tick
            if c == 0:  # how much slower the vmapped samples ran than the timed calls predict
                self.slowdown = max(self.slowdown, (last - compile_guess) / (CHUNK * per_sample))
            else:
                self.slowdown = max(self.slowdown, last / (CHUNK * per_sample))
            next_chunk = last if c > 0 else CHUNK * per_sample * self.slowdown
            if time.perf_counter() - start + next_chunk > allowance or self.clock.left() < next_chunk:
                break
        taken = jax.tree_util.tree_map(lambda *parts: jnp.concatenate(parts), *chunks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference's error is reported once, in the reasons
            return quality_of_windows(taken, self.reference, reference_error=self.error)

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
        trajectory = workers * horizon * state_bytes
        if self.full_bptt_compiled:  # what full-bptt holds besides its stored states
            room = self.budget - max(self.full_bptt_memory - trajectory, 0)
        else:  # full-bptt not compiled (its model is over the budget): half the budget for the states
            room = self.budget // 2
        slots = int(room // (workers * state_bytes))
        if slots < 1:
            return settings, (
                f"the budget {format_bytes(self.budget)} leaves no room for a state of {format_bytes(state_bytes)} "
                f"per worker ({workers} workers) besides what full-bptt holds apart from its states"
            )
        return {**settings, "memory_budget": min(slots, horizon - 1)}, None


def _fraction(snr: float) -> float:
    """``snr / (1 + snr)``, 1 at an infinite SNR."""
    return 1.0 if math.isinf(snr) else snr / (1.0 + snr)


def _ranked(rows: list[AdviceRow]) -> list[AdviceRow]:
    def order(row):
        measured = math.isfinite(row.progress_per_second)
        return (not measured, -(row.progress_per_second if measured else 0.0), row.label)

    return sorted(rows, key=order)


def _chaos_reason(exponent, error, horizon, chaotic, shape) -> str:
    if not math.isfinite(exponent):
        return "lambda_1 is not finite: the state diverges; treated as chaotic."
    growth = exponent * horizon
    return (
        f"lambda_1 = {exponent:+.4g} ± {error:.2g} per step ({shape[0]} trajectories of {shape[1]} steps): "
        f"perturbations {'grow' if growth > 0 else 'shrink'} by exp(lambda_1 T) = {math.exp(min(growth, 700)):.3g} "
        f"over the horizon T = {horizon}; "
        + (
            "chaotic over its horizon"
            if chaotic
            else "not chaotic over its horizon (chaotic needs lambda_1 > "
            f"{CHAOS_Z:g} SE and exp(lambda_1 T) >= {GROWTH_FACTOR:g})"
        )
        + "."
    )


def _growth_reason(horizons, median, growth, chaotic, exploding) -> str:
    start = horizons.index(max(1, horizons[-1] // 16))
    text = (
        f"The exact gradient's median norm over episodes goes from {median[start]:.3g} (first {horizons[start]} "
        f"steps) to {median[-1]:.3g} (all {horizons[-1]}), x{growth:.3g}"
    )
    if exploding:
        return text + f": BPTT-family gradients explode over this horizon (chaotic, and x >= {NORM_GROWTH:g})."
    if chaotic:
        return text + f": under x{NORM_GROWTH:g}, so the chaos does not reach the loss's gradient; not exploding."
    return text + ": not exploding."


def _reference_reason(kind, count, relative_error, chaotic, exponent, horizon) -> str:
    if kind == "exact":
        text = (
            f"Reference: the exact gradient averaged over {count} episodes, relative standard error "
            f"{relative_error:.3g} (the system is not chaotic over its horizon)"
        )
    else:
        text = (
            f"Reference: the gradient of the loss smoothed at {kind.split(', ')[1]} (the task's sigma), from "
            f"{count} antithetic ES pairs over whole episodes, relative standard error {relative_error:.3g}: the "
            f"exact gradient of a chaotic system is noise (its variance grows like exp(2 lambda_1 T) = "
            f"{math.exp(min(2 * exponent * horizon, 700)):.3g})"
        )
    if relative_error > REFERENCE_TARGET:
        text += (
            f"; over the {REFERENCE_TARGET:g} aimed at in the time given, so only larger biases are detectable "
            "(the bias z counts the reference's error)"
        )
    return text + "."


def _verdict_reasons(rows: list[AdviceRow], best: AdviceRow | None, budget: int, task: Task) -> list[str]:
    threshold = bias_threshold(ravel_pytree(task.theta)[0].size)
    reasons = []
    for flag, rule in (
        ("biased", f"bias z > {threshold:.3g} and relative bias > {BIAS_TOLERANCE:g}"),
        ("exploding", f"exp(lambda_1 K) >= {GROWTH_FACTOR:g} over the steps K they differentiate through"),
        ("over budget", f"compiled memory over {format_bytes(budget)}"),
        ("non-finite", "estimates that are not finite"),
    ):
        marked = [row for row in rows if flag in row.verdict.split(", ")]
        if marked:
            detail = ", ".join(f"{row.label} ({row.note.split('; ')[0]})" for row in marked[:6])
            more = f" and {len(marked) - 6} more" if len(marked) > 6 else ""
            reasons.append(f"{flag.capitalize()} ({rule}): {detail}{more}.")
    if best is not None:
        others = [row for row in rows if row.verdict == "ok" and row is not best and row.progress_per_second > 0]
        runner = (
            f"; {best.progress_per_second / others[0].progress_per_second:.3g}x the runner-up {others[0].label} "
            f"({others[0].progress_per_second:.3g}/s)"
            if others
            else "; the only candidate that qualifies"
        )
        reasons.append(
            f"Recommended: {best.label}, the most expected progress per second among the unflagged candidates: "
            f"{best.progress_per_second:.3g}/s (cosine {best.cosine:.3f}, SNR per call {best.snr:.3g}, "
            f"{best.seconds:.3g} s and {best.system_steps} system steps per call, {format_bytes(best.memory)})"
            f"{runner}."
        )
        return reasons
    measured = [row for row in rows if math.isfinite(row.progress_per_second)]
    over = [row for row in rows if "over budget" in row.verdict.split(", ")]
    considered = [row for row in rows if row.verdict != "not applicable"]
    if over and len(over) == len(considered):
        smallest = min(over, key=lambda row: row.memory)
        reasons.append(
            f"No recommendation: no candidate fits the memory budget of {format_bytes(budget)}; the smallest, "
            f"{smallest.label}, needs {format_bytes(smallest.memory)}."
        )
    elif not measured:
        reasons.append("No recommendation: no candidate could be measured in the time given (see the table).")
    else:
        reasons.append(
            "No recommendation: every measured candidate is flagged (biased, exploding or over budget) or its mean "
            "does not point along the reference (cosine <= 0)."
        )
    return reasons


class _Build(NamedTuple):
    """A row's estimator as a task's own build (``Task.estimators``), for the race of ``verify``."""

    name: str
    settings: dict

    def __call__(self, system, truncation=None):
        del truncation  # the row's settings hold its own
        return registry.get(self.name).constructor(system, **self.settings)


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


def verify(
    advice: Advice,
    *,
    seconds: float = 20.0,
    top: int = 3,
    seeds: int | None = None,
    out_dir: str | None = None,
    progress: bool = True,
) -> Verification:
    """Races the `top` candidates of `advice` under `unroll.compare`, to check the recommendation.

    The `top` unflagged candidates (by expected progress per second) race at an equal budget of
    `seconds` of training each, on the same task; the result says whether the race's winner
    (lowest final objective, mean over seeds) is the recommendation.

    Args:
      advice: what ``advise`` returned.
      seconds: the training seconds each candidate gets (``budget="seconds=..."``).
      top: how many candidates race.
      seeds: seeds per candidate. Default: the task's.
      out_dir: the comparison's folder. Default: ``runs/<task>-verify-<time>``.
      progress: progress bars.

    Returns:
      A `Verification`.

    Raises:
      BadValue: the advice has no recommendation, or fewer than two candidates qualify.
    """
    import dataclasses

    from unroll.comparison import compare

    if advice.recommendation is None:
        raise BadValue("nothing to verify: the advice has no recommendation (see its reasons).")
    rows = [row for row in advice.rows if row.verdict in ("recommended", "ok")][:top]
    if len(rows) < 2:
        raise BadValue(
            f"nothing to race: only {len(rows)} candidate qualifies ({rows[0].label}); the race needs two or more."
        )
    task = advice.task
    builds = {row.label: _Build(row.name, row.settings) for row in rows}
    race = dataclasses.replace(task, estimators={**task.estimators, **builds}, default_estimators=list(builds))
    out_dir = out_dir or f"runs/{task.name}-verify-{time.strftime('%Y%m%d-%H%M%S')}"
    folder, summary = compare(
        race, list(builds), budget=f"seconds={seconds:g}", seeds=seeds, out_dir=out_dir, progress=progress
    )
    objectives = {label: float(entry["final_objective"]["mean"]) for label, entry in summary["estimators"].items()}
    winner = min(objectives, key=lambda label: (not math.isfinite(objectives[label]), objectives[label]))
    agrees = winner == advice.recommendation.label
    listing = ", ".join(f"{label} {value:.4g}" for label, value in objectives.items())
    text = (
        f"Race ({seconds:g} s of training each, {len(summary['seeds'])} seeds; final objective, mean over seeds: "
        f"{listing}): the winner, {winner}, {'is' if agrees else 'is not'} the recommendation "
        f"({advice.recommendation.label})."
    )
    return Verification(tuple(builds), winner, objectives, agrees, folder, text)
