"""The outer loop: exact iterates, seeds as a vmap axis, divergence handling."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.stochastic import THETA, linear_quadratic
from unroll.tasks import influence_balancing


def test_sgd_iterates_match_a_hand_loop():
    system = linear_quadratic(5, target_noise=0.0)
    lr, steps = 0.05, 6
    theta, history = unroll.train(
        unroll.full_bptt(system), optax.sgd(lr), jnp.asarray(THETA), jax.random.key(0), steps, progress=False
    )
    expected = jnp.asarray(THETA)
    losses = []
    for _ in range(steps):
        losses.append(unroll.episode_loss(system, expected, jax.random.key(0)))
        expected = expected - lr * unroll.exact_gradient(system, expected, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(theta), np.asarray(expected), rtol=1e-12)
    np.testing.assert_allclose(history["loss"], np.asarray(losses), rtol=1e-12)
    assert history["steps"].tolist() == [5] * steps
    assert int(history["first_nonfinite"]) == -1


def test_seeds_are_a_vmap_axis_equal_to_single_runs():
    system = linear_quadratic(7)
    est = unroll.pes(system, truncation=3, sigma=0.1, num_particles=2, num_workers=2)
    key = jax.random.key(3)
    theta, history = unroll.train(est, optax.sgd(0.01), jnp.asarray(THETA), key, 4, num_seeds=3, progress=False)
    assert history["loss"].shape == (3, 4) and theta.shape == (3, 3)
    single, single_history = unroll.train(
        est, optax.sgd(0.01), jnp.asarray(THETA), jax.random.split(key, 3)[1], 4, progress=False
    )
    np.testing.assert_allclose(np.asarray(theta[1]), np.asarray(single), rtol=1e-10)
    np.testing.assert_allclose(history["loss"][1], single_history["loss"], rtol=1e-10)
    assert not np.allclose(np.asarray(theta[0]), np.asarray(theta[1]))


def _exploding_system():
    """Finite for theta < 1, NaN loss once theta >= 1."""

    def init(theta, key):
        return jnp.zeros(())

    def step(theta, state, t):
        loss = jnp.where(theta[0] < 1.0, -theta[0], jnp.nan)
        return state, loss

    return unroll.System(init, step, 2)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_nonfinite_loss_stops_and_keeps_the_last_finite_theta(mode):
    system = _exploding_system()
    theta0 = jnp.asarray([0.55])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        theta, history = unroll.train(
            unroll.full_bptt(system), optax.sgd(0.2), theta0, jax.random.key(0), 6, progress=False, on_nonfinite=mode
        )
    # theta: 0.55 -> 0.75 -> 0.95 -> 1.15 (its loss, at step 3, is NaN)
    assert int(history["first_nonfinite"]) == 3
    np.testing.assert_allclose(np.asarray(theta), [1.15], rtol=1e-12)
    assert history["accepted"].tolist() == [True, True, True, False, False, False]
    assert int(history["num_rejected"]) == 3


def test_eval_fn_history():
    system = linear_quadratic(5, target_noise=0.0)
    theta, history = unroll.train(
        unroll.full_bptt(system),
        optax.sgd(0.05),
        jnp.asarray(THETA),
        jax.random.key(0),
        4,
        eval_fn=lambda th: {"norm": jnp.sum(th**2)},
        eval_every=2,
        progress=False,
    )
    assert history["eval_step"].tolist() == [0, 2, 4]
    assert history["eval/norm"][-1] == pytest.approx(float(jnp.sum(theta**2)), rel=1e-12)
    assert history["eval/norm"][0] == pytest.approx(float(np.sum(THETA**2)), rel=1e-12)


def test_a_stopped_run_ends_early_with_the_history_so_far():
    """With on_nonfinite="stop", once every seed has stopped the loop ends at its next
    check (every STOP_CHECK_EVERY steps): the history covers the steps run, all after the
    stop rejected, and theta is the last finite one. "skip" runs every step."""
    from unroll.training import STOP_CHECK_EVERY

    system, theta0 = _exploding_system(), jnp.asarray([0.55])
    with pytest.warns(RuntimeWarning, match=r"exploding: a non-finite loss.*stopped at outer step\(s\) \[3\]"):
        theta, history = unroll.train(
            unroll.full_bptt(system),
            optax.sgd(0.2),
            theta0,
            jax.random.key(0),
            1000,
            num_seeds=2,
            progress=False,
            name="exploding",
        )
    assert history["loss"].shape == (2, STOP_CHECK_EVERY)
    assert not history["accepted"][:, 3:].any() and history["accepted"][:, :3].all()
    np.testing.assert_allclose(np.asarray(theta), [[1.15], [1.15]], rtol=1e-12)
    with pytest.warns(RuntimeWarning, match="skipped steps from outer step"):
        _, skipped = unroll.train(
            unroll.full_bptt(system), optax.sgd(0.2), theta0, jax.random.key(0), 40, progress=False, on_nonfinite="skip"
        )
    assert skipped["loss"].shape == (40,)


def test_a_time_limit_ends_the_run_with_its_history_and_the_same_iterates():
    """A budget spent by the first step stops after it; the steps it ran are those of an
    unlimited run; a generous budget changes nothing; a bad budget is a clear error."""
    system = linear_quadratic(5, target_noise=0.0)
    run = lambda **kw: unroll.train(
        unroll.full_bptt(system), optax.sgd(0.05), jnp.asarray(THETA), jax.random.key(0), 5, progress=False, **kw
    )
    theta_1, short = run(time_limit=1e-9)
    theta_full, full = run()
    _, generous = run(time_limit=1e6)
    assert short["loss"].shape == (1,) and float(short["train_time_s"]) > 0
    np.testing.assert_allclose(short["loss"], full["loss"][:1], rtol=1e-12)
    expected = jnp.asarray(THETA) - 0.05 * unroll.exact_gradient(system, jnp.asarray(THETA), jax.random.key(0))
    np.testing.assert_allclose(np.asarray(theta_1), np.asarray(expected), rtol=1e-12)
    np.testing.assert_allclose(generous["loss"], full["loss"], rtol=1e-12)
    with pytest.raises(ValueError, match="`time_limit`=0"):
        run(time_limit=0)
    with pytest.raises(TypeError, match="`time_limit` must be a number"):
        run(time_limit="10m")


def test_a_time_limit_stops_at_the_first_outer_step_that_reaches_it(monkeypatch):
    """On a clock the test controls (each reading 0.25 s after the last; ``train`` reads it once
    after each outer step), a 1.0 s limit ends the run after exactly the 4th outer step: the first
    whose end reads 1.0 s. This is the rule that ``compare``'s ``seconds`` budget relies on, free of
    the machine's timing."""
    readings = iter(np.arange(1, 1000) * 0.25)
    monkeypatch.setattr(unroll.training, "time", types.SimpleNamespace(perf_counter=lambda: float(next(readings))))
    system = linear_quadratic(5, target_noise=0.0)
    _, history = unroll.train(
        unroll.full_bptt(system),
        optax.sgd(0.05),
        jnp.asarray(THETA),
        jax.random.key(0),
        10,
        progress=False,
        time_limit=1.0,
    )
    assert history["loss"].shape == (4,)
    assert float(history["train_time_s"]) >= 1.0


@pytest.mark.parametrize("num_seeds", [None, 2])
def test_the_history_has_the_shapes_docs_training_md_states(num_seeds):
    system = influence_balancing(horizon=10)
    estimator = unroll.truncated_bptt(system, truncation=5)
    theta, history = unroll.train(
        estimator, optax.sgd(1e-3), jnp.asarray(0.3), jax.random.key(0), num_steps=7, num_seeds=num_seeds,
        eval_fn=lambda th: {"objective": th**2}, eval_every=3, progress=False,
    )  # fmt: skip
    seeds = () if num_seeds is None else (num_seeds,)
    steps, evaluations = 7, 4  # evaluated at steps 0, 3, 6 and after the last
    expected = {
        **dict.fromkeys(["loss", "steps", "grad_norm", "accepted"], seeds + (steps,)),
        "eval/objective": seeds + (evaluations,),
        **dict.fromkeys(["eval_step", "eval_time_s"], (evaluations,)),
        **dict.fromkeys(["first_nonfinite", "num_rejected"], seeds),
        **dict.fromkeys(["train_time_s", "compile_s"], ()),
    }
    assert {k: np.shape(v) for k, v in history.items()} == expected
    assert np.shape(theta) == seeds


class _Unhashable:
    """An estimator object that defines equality and so no hash: train cannot cache its compiled step."""

    def __init__(self, estimator):
        self.init, self.estimate = estimator.init, estimator.estimate

    def __eq__(self, other):
        return self is other

    __hash__ = None


def test_training_the_same_objects_again_reuses_the_compiled_step_and_repeats_the_run():
    """A second train of the same estimator and optimizer (another theta, another key) reuses the jitted
    start and outer step (a cache hit, nothing traced again) and gives exactly what a fresh pair of the
    same construction gives; an unhashable estimator trains uncached to the same numbers."""
    from unroll.training import _cached_steps

    system = linear_quadratic(7)
    make = lambda: unroll.pes(system, truncation=3, sigma=0.1, num_particles=2, num_workers=2)
    est, optimizer = make(), optax.sgd(0.01)
    run = lambda e, o, key: unroll.train(e, o, jnp.asarray(THETA), key, 3, num_seeds=2, progress=False)
    run(est, optimizer, jax.random.key(0))
    hits = _cached_steps.cache_info().hits
    theta, history = run(est, optimizer, jax.random.key(1))
    assert _cached_steps.cache_info().hits == hits + 1
    fresh_theta, fresh_history = run(make(), optax.sgd(0.01), jax.random.key(1))  # traced anew
    np.testing.assert_array_equal(np.asarray(theta), np.asarray(fresh_theta))
    np.testing.assert_array_equal(history["loss"], fresh_history["loss"])
    uncached_theta, _ = run(_Unhashable(est), optimizer, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(uncached_theta), np.asarray(theta))
