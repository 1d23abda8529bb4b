"""ES, truncated ES, PES, NRES: unbiasedness (or its absence) against the closed form.

The setting exposes the episode-end traps: horizon 7 not a multiple of truncation 3,
three staggered workers (offsets 0, 2, 4), so windows straddle episode ends at every
position, and an episode-random target (particles of a worker share it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.stochastic import THETA, exact, linear_quadratic, stream_averages, z_scores
from unroll.estimators.evolution import PESState, perturbations, perturbed_rule
from unroll.window import Estimator, Rule, run_windows, tree_add, tree_scale

HORIZON, TRUNCATION, WORKERS, PARTICLES, SIGMA = 7, 3, 3, 4, 0.3
NUM_WINDOWS = 7  # 21 steps: each worker covers every time index exactly 3 times
NUM_SAMPLES = 4000


def _samples(estimator, seed=0):
    theta = jnp.asarray(THETA)
    return stream_averages(estimator, theta, jax.random.key(seed), NUM_SAMPLES, NUM_WINDOWS)


@pytest.mark.parametrize("name", ["pes", "nres"])
def test_online_es_unbiased(name):
    system = linear_quadratic(HORIZON)
    make = getattr(unroll, name)
    samples = _samples(make(system, truncation=TRUNCATION, sigma=SIGMA, num_particles=PARTICLES, num_workers=WORKERS))
    z = z_scores(samples, exact(HORIZON))
    print(f"{name}: z-scores {np.round(z, 2)}")
    assert np.all(np.abs(z) < 4), z


def test_es_unbiased():
    system = linear_quadratic(HORIZON)
    samples = _samples(unroll.es(system, sigma=SIGMA, num_particles=PARTICLES, num_workers=WORKERS))
    z = z_scores(samples, exact(HORIZON))
    assert np.all(np.abs(z) < 4), z


def test_truncated_es_biased():
    system = linear_quadratic(HORIZON)
    samples = _samples(
        unroll.truncated_es(system, truncation=TRUNCATION, sigma=SIGMA, num_particles=PARTICLES, num_workers=WORKERS)
    )
    z = z_scores(samples, exact(HORIZON))
    print(f"truncated_es: z-scores {np.round(z, 1)}")
    assert np.max(np.abs(z)) > 20, z


def test_short_truncated_bptt_biased_and_truncated_es_targets_it():
    """Truncated ES is an unbiased estimate of truncated BPTT's (biased) target."""
    system = linear_quadratic(HORIZON)
    tbptt = _samples(unroll.truncated_bptt(system, truncation=TRUNCATION, num_workers=WORKERS))
    tes = _samples(
        unroll.truncated_es(system, truncation=TRUNCATION, sigma=SIGMA, num_particles=PARTICLES, num_workers=WORKERS)
    )
    truncated_target = tbptt.mean(axis=0)
    bias = truncated_target - exact(HORIZON)
    assert np.linalg.norm(bias) > 0.1 * np.linalg.norm(exact(HORIZON)), bias
    z = z_scores(tes, truncated_target)
    assert np.all(np.abs(z) < 5), z  # 5: the reference itself is a 4000-sample mean


def _buggy_pes(system, truncation, sigma, num_particles, num_workers) -> Estimator:
    """PES as a widely used implementation writes it: the step that ends an episode is
    credited with the noise of the next episode (this window's eps) instead of its own xi."""
    honest = perturbed_rule(system)

    def step(theta, state, t, xi, eps):
        state, xi, loss, _ = honest.step(theta, state, t, xi, eps)
        weight = jax.tree_util.tree_map(lambda a, b: jnp.where(t == system.horizon - 1, b, a), xi, eps)
        return state, xi, loss, tree_scale(loss, weight)

    rule = Rule(honest.start, step)
    shape = (num_workers, num_particles)
    good = unroll.pes(system, truncation=truncation, sigma=sigma, num_particles=num_particles, num_workers=num_workers)

    def estimate(theta, state, key):
        eps = perturbations(key, theta, *shape, sigma, True)
        xi = tree_add(state.xi, eps)
        workers, xi, total, losses = run_windows(system, rule, theta, state.workers, xi, eps, truncation)
        grad = jax.tree_util.tree_map(lambda s: s.sum((0, 1)) / (np.prod(shape) * truncation * sigma**2), total)
        return grad, PESState(workers, xi), {"loss": losses.mean()}

    return Estimator(good.init, estimate)


def test_the_known_pes_bug_is_detected():
    """The test above has the power to see the episode-end bug."""
    system = linear_quadratic(HORIZON)
    samples = _samples(_buggy_pes(system, TRUNCATION, SIGMA, PARTICLES, WORKERS))
    z = z_scores(samples, exact(HORIZON))
    print(f"buggy pes: z-scores {np.round(z, 1)}")
    assert np.max(np.abs(z)) > 8, z


def test_nres_variance_below_pes():
    """Li et al. (2023): NRES has lower variance than PES. Compared as an optimizer sees
    them: one estimate, 7 staggered workers spread over an episode of 7 windows (PES's
    xi grows with the window's position in the episode, NRES's eps does not)."""
    system = linear_quadratic(21)
    kwargs = dict(truncation=3, sigma=SIGMA, num_particles=2, num_workers=7)
    theta = jnp.asarray(THETA)
    pes_var = stream_averages(unroll.pes(system, **kwargs), theta, jax.random.key(1), NUM_SAMPLES, 1).var(axis=0)
    nres_var = stream_averages(unroll.nres(system, **kwargs), theta, jax.random.key(2), NUM_SAMPLES, 1).var(axis=0)
    ratio = pes_var.sum() / nres_var.sum()
    print(f"variance ratio PES / NRES (one estimate, 7 windows per episode): {ratio:.2f}")
    assert np.all(pes_var > nres_var), (pes_var, nres_var)
    assert ratio > 1.1, ratio


def test_antithetic_es_is_forward_gradient_on_quadratic():
    """For a quadratic L, (L(th + e) - L(th - e)) e / (2 sigma^2) = (grad . v) v, v = e / sigma."""
    system = linear_quadratic(HORIZON, target_noise=0.0)
    theta = jnp.asarray(THETA)
    est = unroll.es(system, sigma=SIGMA, num_particles=2)
    state = est.init(theta, jax.random.key(0))
    for i in range(3):
        key = jax.random.key(10 + i)
        grad, state, _ = est.estimate(theta, state, key)
        v = np.asarray(perturbations(key, theta, 1, 2, SIGMA, True))[0, 0] / SIGMA
        expected = np.dot(exact(HORIZON), v) * v
        np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-9, atol=1e-12)


def test_nres_aligned_windows_average_to_full_es():
    """Averaged over the windows of one aligned episode, NRES equals full ES with the same noise."""
    horizon, truncation, particles = 6, 2, 4
    system = linear_quadratic(horizon)
    theta = jnp.asarray(THETA)
    est = unroll.nres(system, truncation=truncation, sigma=SIGMA, num_particles=particles)
    state = est.init(theta, jax.random.key(3))
    grads = []
    for k in range(horizon // truncation):
        grad, state, _ = est.estimate(theta, state, jax.random.key(k))
        grads.append(np.asarray(grad))
    eps = np.asarray(state.eps)[0]  # [P, 3]: each particle's episode noise
    # the episode's data key: the first episode of worker 0 (see unroll.window.start_workers)
    worker_key = jax.random.split(jax.random.key(3), 1)[0]
    _, episode_key, _ = jax.random.split(worker_key, 3)
    losses = np.array([unroll.episode_loss(system, theta + e, episode_key) for e in eps])
    full_es = (eps * losses[:, None]).sum(0) / (particles * SIGMA**2)
    np.testing.assert_allclose(np.mean(grads, axis=0), full_es, rtol=1e-9)
    assert np.all(np.asarray(state.workers.t) == horizon)
