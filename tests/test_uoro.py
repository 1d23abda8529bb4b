"""UORO: unbiased for the episode gradient (Tallec & Ollivier 2017), with its variance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.stochastic import THETA, exact, linear_quadratic, stream_averages, z_scores
from tests.test_rtrl import diagonal_system, diagonal_theta


def test_unbiased_with_staggered_workers_and_straddling_windows():
    """T = 7, K = 3, 3 staggered workers; init depends on theta (the rank-one start
    nu, nu^T d s_0 / d theta carries it); 4000 stream averages of 7 windows."""
    system = linear_quadratic(7)
    samples = stream_averages(
        unroll.uoro(system, truncation=3, num_workers=3), jnp.asarray(THETA), jax.random.key(0), 4000, 7
    )
    z = z_scores(samples, exact(7))
    relative_variance = samples.var(axis=0).sum() / np.sum(exact(7) ** 2)
    print(f"uoro z-scores {np.round(z, 2)}; variance / |grad|^2 = {relative_variance:.2f}")
    assert np.all(np.abs(z) < 4), z
    # not exact: a stochastic rank-one approximation (rtrl is the exact one)
    assert relative_variance > 1e-3


def test_complex_state_is_refused_with_a_clear_message():
    system = diagonal_system()
    with pytest.raises(TypeError, match="uoro.*complex.*rtrl"):
        unroll.uoro(system, truncation=2).init(diagonal_theta(), jax.random.key(0))
