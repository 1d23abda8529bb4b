"""ES, truncated ES, PES, NRES: unbiasedness (or its absence) against the closed form.

The setting exposes the episode-end traps: horizon 7 not a multiple of truncation 3,
three staggered workers (offsets 0, 2, 4), so windows straddle episode ends at every
position, and an episode-random target (particles of a worker share it).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.stochastic import THETA, exact, linear_quadratic, stream_averages, z_scores
from unroll._tree import perturbations, tree_scale
from unroll.contract import Estimator
from unroll.estimators._es import check_es, es_windowed
from unroll.estimators.evolution import _perturbed_rule as perturbed_rule

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

    def step(theta, state, t, acc, eps):
        state, acc, loss, _ = honest.step(theta, state, t, acc, eps)
        weight = jax.tree_util.tree_map(lambda a, b: jnp.where(t == system.horizon - 1, b, a), acc.xi, eps)
        return state, acc, loss, tree_scale(loss, weight)

    settings = check_es(system, truncation, sigma, num_particles, num_workers, True)
    return es_windowed(system, honest._replace(step=step), settings)


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
    eps = np.asarray(state.acc.eps)[0]  # [P, 3]: each particle's episode noise (NRES's accumulator)
    # the episode's data key: the first episode of worker 0 (see unroll._engine.start_workers)
    worker_key = jax.random.split(jax.random.key(3), 1)[0]
    _, episode_key, _ = jax.random.split(worker_key, 3)
    losses = np.array([unroll.episode_loss(system, theta + e, episode_key) for e in eps])
    full_es = (eps * losses[:, None]).sum(0) / (particles * SIGMA**2)
    np.testing.assert_allclose(np.mean(grads, axis=0), full_es, rtol=1e-9)
    assert np.all(np.asarray(state.workers.t) == horizon)


# --------------------------------------------------------------------------- nonfinite="drop"

TARGET = jnp.array([1.0, -1.0])
KEY = jax.random.key(0)


def cliff_system(horizon=4, radius=2.5):
    """The loss ``|theta - (1, -1)|^2`` each step, infinite beyond ``radius`` of the
    optimum: perturbations that reach past it diverge."""

    def step(theta, state, t):
        d = jnp.sum((theta - TARGET) ** 2)
        return state + 1.0, jnp.where(d < radius**2, d, jnp.inf)

    return unroll.System(lambda theta, key: jnp.zeros(()), step, horizon)


ES_FAMILY = {
    "pes": lambda s, **kw: unroll.pes(s, truncation=2, **kw),
    "nres": lambda s, **kw: unroll.nres(s, truncation=2, **kw),
    "gpes": lambda s, **kw: unroll.gpes(s, truncation=1, reuse=2, **kw),
    "es": lambda s, **kw: unroll.es(s, **kw),
    "truncated_es": lambda s, **kw: unroll.truncated_es(s, truncation=2, **kw),
}


@pytest.mark.parametrize("name", ES_FAMILY)
def test_drop_meta_trains_past_a_cliff_to_the_optimum(name):
    """sigma = 1 from theta = 0: many perturbations land past the cliff. With
    nonfinite='drop' the run reaches the optimum (1, -1) and says how many it dropped; by
    default it stops, and the warning names the option."""
    system, theta = cliff_system(), jnp.zeros(2)
    settings = {"sigma": 1.0, "num_particles": 8, "num_workers": 2}
    dropping = ES_FAMILY[name](system, nonfinite="drop", **settings)
    trained, history = unroll.train(dropping, optax.sgd(0.05), theta, KEY, 300, progress=False)
    assert int(history["first_nonfinite"]) == -1
    assert np.sum(history["dropped"]) > 0 and np.all(np.isfinite(history["loss"]))
    np.testing.assert_allclose(np.asarray(trained), np.asarray(TARGET), atol=0.15)
    stopping = ES_FAMILY[name](system, **settings)
    with pytest.warns(RuntimeWarning, match="nonfinite='drop'"):
        _, history = unroll.train(stopping, optax.sgd(0.05), theta, KEY, 300, progress=False)
    assert int(history["first_nonfinite"]) >= 0


@pytest.mark.parametrize("name", ES_FAMILY)
def test_drop_is_the_plain_estimate_when_nothing_diverges(name):
    system, theta = cliff_system(radius=1e6), jnp.zeros(2)
    settings = {"sigma": 0.3, "num_particles": 4, "num_workers": 3}
    a, b = (ES_FAMILY[name](system, nonfinite=mode, **settings) for mode in ("stop", "drop"))
    sa, sb = a.init(theta, KEY), b.init(theta, KEY)
    for i in range(3):
        (ga, sa, ia), (gb, sb, ib) = (e.estimate(theta, s, jax.random.fold_in(KEY, i)) for e, s in ((a, sa), (b, sb)))
        np.testing.assert_allclose(np.asarray(gb), np.asarray(ga), rtol=1e-12)
        np.testing.assert_allclose(float(ib["loss"]), float(ia["loss"]), rtol=1e-12)
        assert int(ib["dropped"]) == 0


def test_bad_nonfinite_fails_at_construction():
    with pytest.raises(ValueError, match="`nonfinite`='skip' must be 'stop'.*or 'drop'"):
        unroll.pes(cliff_system(), truncation=2, sigma=0.1, num_particles=4, nonfinite="skip")
