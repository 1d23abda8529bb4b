"""The advisor's rule: its thresholds (judgements, stated in the docs and tested on the built-in tasks),
the least time it runs in, and ``bias_threshold``, the bias z made family-wise over theta's components."""

from __future__ import annotations

# the rule's thresholds: judgements, stated in the docs and tested on the built-in tasks
BIAS_Z = 4.0  # a bias is significant beyond this many standard errors (the estimator's and the reference's)
BIAS_TOLERANCE = 0.2  # ... and harmful beyond this relative size |m - G| / |G|
GROWTH_FACTOR = 100.0  # chaotic over a span K when perturbations grow by exp(lambda_1 K) >= this
NORM_GROWTH = 10.0  # the exact gradient's median norm must grow this much from T/16 to T to confirm explosion
CHAOS_Z = 3.0  # lambda_1 must lie this many standard errors above 0
REFERENCE_TARGET = 0.05  # the reference's relative standard error |SE| / |G| aimed at
REFERENCE_SHARE = 0.2  # at most this share of `seconds` goes into the reference
MIN_SECONDS = 10.0  # below this not even the system's measurements compile on a CPU


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
