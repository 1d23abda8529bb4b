"""GPES-K (Li et al. 2023) against the closed form and against its two extremes.

The standard linear-quadratic setting of ``test_evolution.py``: horizon 7, truncation 3
(an episode touches up to ``ceil(7/3) + 1 = 4`` windows), three staggered workers, so
windows straddle episode ends at every position and chunks of ``reuse`` windows start
mid-window. ``reuse = 1`` is PES, ``reuse >= 4`` covers every episode (NRES).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.stochastic import THETA, exact, linear_quadratic, steady_estimates, stream_averages, z_scores

HORIZON, TRUNCATION, WORKERS, PARTICLES, SIGMA = 7, 3, 3, 4, 0.3
NUM_WINDOWS = 7  # 21 steps: each worker covers every time index exactly 3 times
NUM_SAMPLES = 4000
WHOLE = 4  # windows an episode of 7 steps can touch with windows of 3


def _samples(estimator, seed, num_windows=NUM_WINDOWS):
    return stream_averages(estimator, jnp.asarray(THETA), jax.random.key(seed), NUM_SAMPLES, num_windows)


def _gpes(system, reuse, **kwargs):
    kwargs = {"truncation": TRUNCATION, "sigma": SIGMA, "num_particles": PARTICLES, "num_workers": WORKERS, **kwargs}
    return unroll.gpes(system, reuse=reuse, **kwargs)


def _mean_z(a, b):
    """Per component, the difference of two independent sample means in standard errors."""
    se = np.sqrt(a.var(axis=0, ddof=1) / len(a) + b.var(axis=0, ddof=1) / len(b))
    return (a.mean(axis=0) - b.mean(axis=0)) / se


def _variance_z(a, b):
    """Per component, the difference of two sample variances in standard errors
    (``se(var) = sqrt((m4 - var^2) / n)``, no normality assumed)."""

    def var_and_se(x):
        centered = x - x.mean(axis=0)
        var = np.mean(centered**2, axis=0)
        return var, np.sqrt((np.mean(centered**4, axis=0) - var**2) / len(x))

    (va, sa), (vb, sb) = var_and_se(a), var_and_se(b)
    return (va - vb) / np.sqrt(sa**2 + sb**2)


@pytest.mark.parametrize("reuse", [1, 2, 3, WHOLE, 100])
def test_gpes_unbiased(reuse):
    samples = _samples(_gpes(linear_quadratic(HORIZON), reuse), seed=reuse)
    z = z_scores(samples, exact(HORIZON))
    print(f"gpes reuse={reuse}: z-scores {np.round(z, 2)}")
    assert np.all(np.abs(z) < 4), z


@pytest.mark.parametrize("reuse, twin", [(1, "pes"), (WHOLE, "nres"), (100, "nres")])
def test_gpes_extremes_match_pes_and_nres(reuse, twin):
    """``reuse = 1`` has PES's distribution and a whole-episode ``reuse`` NRES's: their
    means and per-component variances agree within 4 standard errors."""
    system = linear_quadratic(HORIZON)
    kwargs = {"truncation": TRUNCATION, "sigma": SIGMA, "num_particles": PARTICLES, "num_workers": WORKERS}
    gpes = _samples(_gpes(system, reuse), seed=10 + reuse)
    other = _samples(getattr(unroll, twin)(system, **kwargs), seed=20 + reuse)
    mean_z, var_z = _mean_z(gpes, other), _variance_z(gpes, other)
    print(f"gpes reuse={reuse} vs {twin}: mean z {np.round(mean_z, 2)}, variance z {np.round(var_z, 2)}")
    assert np.all(np.abs(mean_z) < 4) and np.all(np.abs(var_z) < 4), (mean_z, var_z)
    # not vacuous: the variances differ from the other extreme's
    far = "nres" if twin == "pes" else "pes"
    assert np.max(np.abs(_variance_z(gpes, _far_samples(far)))) > 4


@functools.cache
def _far_samples(name):
    """The other extreme's samples (seed 30), drawn once: two of the cases compare with pes's."""
    kwargs = {"truncation": TRUNCATION, "sigma": SIGMA, "num_particles": PARTICLES, "num_workers": WORKERS}
    return _samples(getattr(unroll, name)(linear_quadratic(HORIZON), **kwargs), seed=30)


def test_gpes_variance_between_nres_and_pes():
    """Per-estimate variance, as an optimizer sees it in steady state (one window after a
    burn-in of a whole episode, 7 staggered workers over an episode of 7 windows of 3):
    PES's ``xi`` sums a noise per window of the episode, GPES-K's one per ``K`` windows,
    NRES's one; so NRES < GPES-3 < GPES-2 < PES, and GPES-1 ~ PES, GPES-8 ~ NRES."""
    system = linear_quadratic(21)
    kwargs = {"truncation": 3, "sigma": SIGMA, "num_particles": 2, "num_workers": 7}
    theta = jnp.asarray(THETA)

    def variance(estimator, seed):
        return steady_estimates(estimator, theta, jax.random.key(seed), NUM_SAMPLES, burn_in=7).var(axis=0).sum()

    variances = {"pes": variance(unroll.pes(system, **kwargs), 1), "nres": variance(unroll.nres(system, **kwargs), 2)}
    for reuse in (1, 2, 3, 8):  # 8: every episode of 21 steps (it touches up to 8 windows of 3)
        variances[f"gpes reuse={reuse}"] = variance(unroll.gpes(system, reuse=reuse, **kwargs), 3 + reuse)
    print("summed per-estimate variance: " + ", ".join(f"{k} {v:.4g}" for k, v in variances.items()))
    pes, nres = variances["pes"], variances["nres"]
    assert nres < variances["gpes reuse=3"] < variances["gpes reuse=2"] < pes, variances
    # the extremes within sampling error of their twins (the relative standard error of a
    # variance over 4000 samples is a few percent)
    assert abs(variances["gpes reuse=1"] / pes - 1) < 0.1, variances
    assert abs(variances["gpes reuse=8"] / nres - 1) < 0.1, variances


def test_gpes_reuse_must_be_a_positive_int():
    system = linear_quadratic(HORIZON)
    with pytest.raises(ValueError, match="`reuse` must be a positive int"):
        _gpes(system, 0)
    with pytest.raises(TypeError, match="`reuse`"):
        _gpes(system, 1.5)
