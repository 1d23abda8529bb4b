"""Helpers for statistical tests of stochastic estimators.

A linear-quadratic system (the loss is quadratic in theta, so Gaussian smoothing
does not move its gradient: ES, PES and NRES target the exact gradient) with an
episode-random target, and the *stream average*: from one init, the mean of
``num_windows`` consecutive window estimates. When ``num_windows * truncation`` is
a multiple of the horizon, every worker's windows cover each time index of the
episode equally often, so the expectation of the stream average is exactly
``dL/dtheta`` for an unbiased estimator, whatever the stagger and wherever the
episode ends fall inside windows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import unroll
from unroll.diagnostics import estimate_samples

STATE_MATRIX = np.array([[0.7, 0.2], [-0.3, 0.6]])
INPUT_MATRIX = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]])
TARGET = np.array([0.4, -0.2])


def linear_quadratic(horizon: int = 7, target_noise: float = 0.3) -> unroll.System:
    """``s_0 = 0.5 theta[:2] + 1``; ``s' = A s + B theta``; ``l = 0.5 |s' - y|^2 + 0.05 |theta|^2``
    with ``y = TARGET + target_noise * N(0, I)`` drawn per episode from its key (kept in
    the state). ``E_y`` of the gradient is the gradient at ``target_noise = 0``."""

    def init(theta, key):
        target = TARGET + target_noise * jax.random.normal(key, (2,), theta.dtype)
        return (0.5 * theta[:2] + 1.0, target)

    def step(theta, state, t):
        s, target = state
        s = jnp.asarray(STATE_MATRIX, s.dtype) @ s + jnp.asarray(INPUT_MATRIX, s.dtype) @ theta
        loss = 0.5 * jnp.sum((s - target) ** 2) + 0.05 * jnp.sum(theta**2)
        return (s, target), loss

    return unroll.System(init, step, horizon)


THETA = np.array([0.3, -0.5, 0.8])


def exact(horizon: int) -> np.ndarray:
    """The exact gradient of the expected episode loss (noise-free target)."""
    system = linear_quadratic(horizon, target_noise=0.0)
    return np.asarray(unroll.exact_gradient(system, jnp.asarray(THETA), jax.random.key(0)))


def stream_averages(estimator, theta, key, num_samples: int, num_windows: int) -> np.ndarray:
    """``[num_samples, ...]``: per independent seed, the mean of ``num_windows``
    consecutive estimates from one ``init`` (``unroll.diagnostics.estimate_samples``)."""
    return np.asarray(estimate_samples(estimator, theta, key, num_samples, num_windows))


def z_scores(samples: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per component, ``(mean - reference) / standard error``."""
    mean = samples.mean(axis=0)
    se = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    return (mean - reference) / se


def steady_estimates(estimator, theta, key, num_samples: int, burn_in: int) -> np.ndarray:
    """``[num_samples, ...]``: per independent seed, the single estimate of window
    ``burn_in + 1`` after ``init`` (``estimate_samples`` with a burn-in), so accumulators
    such as PES's ``xi`` have reached their steady state."""
    return np.asarray(estimate_samples(estimator, theta, key, num_samples, 1, burn_in=burn_in))
