"""Bad input fails early, with a message that names the argument (interface.md, section 4).

Errors are ``ValueError`` or ``TypeError``, raised when the estimator is built (arguments,
the system's shape) or when ``init`` traces the system on theta (the loss, the state, the
leaves of theta) -- never a NaN later. Each check is paired with a valid-input control,
so a constructor that raises on everything would fail here too.
"""

import math
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import ES_FAMILY, ESTIMATOR_NAMES, WINDOWED, build_estimator, rnn_system, rnn_theta

KEY = jax.random.PRNGKey(0)
HORIZON = 4
ERRORS = (ValueError, TypeError)


def good_system(horizon=HORIZON):
    return rnn_system(n=3, m=2, horizon=horizon)


def theta():
    return rnn_theta(n=3, m=2)


def with_step(step_fn, horizon=HORIZON):
    """``good_system`` with its ``step`` output passed through ``step_fn(state, loss)``."""
    base = good_system(horizon)

    def step(theta, state, t):
        state, loss = base.step(theta, state, t)
        return step_fn(state, loss)

    return unroll.System(init=base.init, step=step, horizon=horizon)


# --------------------------------------------------------------------------- controls


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_valid_input_does_not_raise(name):
    est = build_estimator(name, good_system())
    state = jax.eval_shape(est.init, theta(), KEY)  # traces init and estimate, runs nothing
    grad, _, info = jax.eval_shape(est.estimate, theta(), state, KEY)
    assert jax.tree_util.tree_structure(grad) == jax.tree_util.tree_structure(theta())
    assert {"loss", "steps"} <= set(info)


def test_exact_gradient_valid_input_does_not_raise():
    unroll.exact_gradient(good_system(), theta(), KEY, num_episodes=2)


@pytest.mark.parametrize("name", ES_FAMILY)
def test_odd_particles_without_antithetic_is_fine(name):
    build_estimator(name, good_system(), num_particles=3, antithetic=False)


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("truncation", [1, HORIZON, np.int64(2)])
def test_truncation_bounds_are_inclusive(name, truncation):
    build_estimator(name, good_system(), truncation=truncation)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("truncation", [0, -2])
def test_truncation_not_positive(name, truncation):
    with pytest.raises(ERRORS, match="truncation") as err:
        build_estimator(name, good_system(), truncation=truncation)
    assert str(truncation) in str(err.value)


@pytest.mark.parametrize("name", WINDOWED)
def test_truncation_longer_than_horizon(name):
    with pytest.raises(ERRORS, match="truncation") as err:
        build_estimator(name, good_system(), truncation=HORIZON + 1)
    assert str(HORIZON + 1) in str(err.value) and "horizon" in str(err.value)


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("truncation", [2.5, "2", None])
def test_truncation_not_int(name, truncation):
    with pytest.raises(ERRORS, match="truncation"):
        build_estimator(name, good_system(), truncation=truncation)


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("num_particles", [1, 3])
def test_odd_particles_with_antithetic(name, num_particles):
    with pytest.raises(ERRORS, match="num_particles") as err:
        build_estimator(name, good_system(), num_particles=num_particles, antithetic=True)
    assert str(num_particles) in str(err.value) and "antithetic" in str(err.value)


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("num_particles", [0, -2])
def test_particles_not_positive(name, num_particles):
    with pytest.raises(ERRORS, match="num_particles"):
        build_estimator(name, good_system(), num_particles=num_particles)


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("sigma", [0.0, -0.1, math.nan])
def test_sigma_not_positive(name, sigma):
    with pytest.raises(ERRORS, match="sigma"):
        build_estimator(name, good_system(), sigma=sigma)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
@pytest.mark.parametrize("num_workers", [0, -1])
def test_num_workers_not_positive(name, num_workers):
    with pytest.raises(ERRORS, match="num_workers"):
        build_estimator(name, good_system(), num_workers=num_workers)


def test_forward_gradient_num_directions_not_positive():
    with pytest.raises(ERRORS, match="num_directions"):
        build_estimator("forward_gradient", good_system(), num_directions=0)


@pytest.mark.parametrize("num_episodes", [0, -1, 1.5])
def test_exact_gradient_num_episodes(num_episodes):
    with pytest.raises(ERRORS, match="num_episodes"):
        unroll.exact_gradient(good_system(), theta(), KEY, num_episodes=num_episodes)


# --------------------------------------------------------------------------- the system


def build_or_exact(name, system):
    """Builds estimator ``name`` on ``system`` (``exact_gradient`` runs on it instead)."""
    if name == "exact_gradient":
        return unroll.exact_gradient(system, theta(), KEY)
    return build_estimator(name, system)


ALL = ESTIMATOR_NAMES + ("exact_gradient",)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("horizon", [0, -3, 4.0, "4", None])
def test_bad_horizon(name, horizon):
    base = good_system()
    system = unroll.System(init=base.init, step=base.step, horizon=horizon)
    with pytest.raises(ERRORS, match="horizon"):
        build_or_exact(name, system)


class NoStep(NamedTuple):
    init: object
    horizon: int


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("kind", ["namedtuple", "namespace", "not_callable"])
def test_system_without_step(name, kind):
    base = good_system()
    if kind == "namedtuple":
        system = NoStep(init=base.init, horizon=HORIZON)
    elif kind == "namespace":
        system = types.SimpleNamespace(init=base.init, horizon=HORIZON)
    else:
        system = unroll.System(init=base.init, step=None, horizon=HORIZON)
    with pytest.raises(ERRORS, match="step"):
        build_or_exact(name, system)


# --------------------------------------------------------------------------- trace time (init)

BAD_STEPS = {
    # a vector loss (forgot to reduce)
    "non_scalar_loss": (lambda state, loss: (state, state[0]), "loss"),
    "shape_1_loss": (lambda state, loss: (state, jnp.reshape(loss, (1,))), "loss"),
    # an integer loss: a jnp int scalar and a Python int
    "int_loss": (lambda state, loss: (state, jnp.round(loss).astype(jnp.int32)), "loss"),
    "python_int_loss": (lambda state, loss: (state, 3), "loss"),
    # the state changes shape (concatenation) or dtype
    "state_shape": (lambda state, loss: ((jnp.concatenate([state[0], state[0]]),), loss), "state"),
    "state_dtype": (lambda state, loss: ((state[0].astype(jnp.float32),), loss), "state"),
}


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
@pytest.mark.parametrize("bad", BAD_STEPS)
def test_bad_step_raises_at_init(name, bad):
    step_fn, word = BAD_STEPS[bad]
    est = build_estimator(name, with_step(step_fn))  # construction cannot know yet
    with pytest.raises(ERRORS, match=word):
        est.init(theta(), KEY)
    with pytest.raises(ERRORS, match=word):  # also when init is traced under jit
        jax.jit(est.init)(theta(), KEY)


@pytest.mark.parametrize("bad", BAD_STEPS)
def test_bad_step_raises_in_exact_gradient(bad):
    step_fn, word = BAD_STEPS[bad]
    with pytest.raises(ERRORS, match=word):
        unroll.exact_gradient(with_step(step_fn), theta(), KEY)


def int_leaf_theta():
    th = theta()
    th["b"] = jnp.asarray([1, 0, -1], jnp.int32)
    return th


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_int_theta_leaf_raises_at_init(name):
    est = build_estimator(name, good_system())
    with pytest.raises(ERRORS, match="theta") as err:
        est.init(int_leaf_theta(), KEY)
    assert "b" in str(err.value) and "int" in str(err.value)  # names the leaf and its dtype


def test_int_theta_leaf_raises_in_exact_gradient():
    with pytest.raises(ERRORS, match="theta"):
        unroll.exact_gradient(good_system(), int_leaf_theta(), KEY)
