"""Influence balancing: the closed form, and which estimators reach its optimum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from unroll import tasks


def test_closed_form_optimum_known_values():
    assert tasks.influence_optimum(200) == pytest.approx(-0.0893, abs=1e-4)
    assert tasks.influence_optimum(1000) == pytest.approx(-0.1465, abs=1e-4)
    assert tasks.influence_optimum(20000) == pytest.approx(-1 / 6, abs=2e-3)  # steady state


@pytest.mark.parametrize("theta", [-0.3, -0.0893, 0.5])
def test_closed_form_loss_equals_unrolled_episode(theta):
    system = tasks.influence_balancing(200)
    unrolled = unroll.episode_loss(system, jnp.asarray(theta, jnp.float64), jax.random.key(0))
    assert float(unrolled) == pytest.approx(float(tasks.influence_loss(theta, 200)), rel=1e-12)
    gap = tasks.influence_gap_fn(200, xp=np)(theta)
    assert gap == pytest.approx(
        tasks.influence_loss(theta, 200) - tasks.influence_loss(tasks.influence_optimum(200), 200), abs=1e-12
    )


def test_exact_gradient_vanishes_at_the_optimum():
    system = tasks.influence_balancing(200)
    theta = jnp.asarray(tasks.influence_optimum(200), jnp.float64)
    assert abs(float(unroll.exact_gradient(system, theta, jax.random.key(0)))) < 1e-10


def _train(estimator, steps, lr, seeds=None):
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.01))
    theta, _ = unroll.train(estimator, opt, jnp.asarray(0.5), jax.random.key(0), steps, num_seeds=seeds, progress=False)
    return np.asarray(theta)


HORIZON = 200


@pytest.mark.slow
def test_full_bptt_reaches_the_optimum():
    system = tasks.influence_balancing(HORIZON)
    theta = _train(unroll.full_bptt(system), 400, 1e-2)
    assert abs(theta - tasks.influence_optimum(HORIZON)) < 1e-3, theta


@pytest.mark.slow
def test_pes_reaches_the_optimum_within_its_noise():
    system = tasks.influence_balancing(HORIZON)
    thetas = _train(unroll.pes(system, truncation=10, sigma=0.1, num_particles=100, num_workers=10), 400, 1e-2, seeds=4)
    spread = max(thetas.std(ddof=1), 1e-3)
    print(f"pes final thetas {thetas}, theta* {tasks.influence_optimum(HORIZON):.4f}")
    assert np.all(np.abs(thetas - tasks.influence_optimum(HORIZON)) < 4 * spread + 5e-3), thetas


@pytest.mark.slow
def test_truncation_one_ends_far_from_the_optimum():
    system = tasks.influence_balancing(HORIZON)
    theta = _train(unroll.truncated_bptt(system, truncation=1, num_workers=10), 400, 1e-2)
    assert abs(theta - tasks.influence_optimum(HORIZON)) > 0.5, theta
