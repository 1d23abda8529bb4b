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

from unroll.advisor._advise import advise
from unroll.advisor._candidates import ORDER
from unroll.advisor._measure import REPEATS, compiled_memory, exact_episodes, span, windows_per_sample
from unroll.advisor._report import Advice, AdviceRow, Recommendation, Verification
from unroll.advisor._system import NUM_EPISODES, NUM_TRAJECTORIES
from unroll.advisor._thresholds import (
    BIAS_TOLERANCE,
    BIAS_Z,
    CHAOS_Z,
    GROWTH_FACTOR,
    MIN_SECONDS,
    NORM_GROWTH,
    REFERENCE_SHARE,
    REFERENCE_TARGET,
    bias_threshold,
)
from unroll.advisor._verify import verify

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
