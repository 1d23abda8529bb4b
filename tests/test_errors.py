"""Bad input fails early, with a message that names the argument (interface.md, section 4).

Errors are ``ValueError`` or ``TypeError``, raised when the estimator is built (arguments,
the system's shape) or when ``init`` traces the system on theta (the loss, the state, the
leaves of theta) -- never a NaN later. Each check is paired with a valid-input control,
so a constructor that raises on everything would fail here too. Every test matches both
the argument's name and the fix the message gives (``docs/bad-input.md`` lists
them). The CLI's bad input is one line on stderr and exit code 2 (more cases in
``tests/test_cli.py``).
"""

import inspect
import math
import re
import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import unroll
from tests.systems import ES_FAMILY, ESTIMATOR_NAMES, REGISTERED, WINDOWED, build_estimator, rnn_system, rnn_theta
from unroll import cli, diagnostics, tasks
from unroll.diagnostics import lyapunov_spectrum

KEY = jax.random.PRNGKey(0)
HORIZON = 4
ERRORS = (ValueError, TypeError)


def raises(call, name, fix, error=ERRORS):
    """``call()`` raises ``error`` with a message that names ``name`` and contains ``fix``
    (both literal substrings); returns the message."""
    with pytest.raises(error, match=re.escape(name)) as info:
        call()
    message = str(info.value)
    assert fix in message, message
    return message


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
    message = raises(
        lambda: build_estimator(name, good_system(), truncation=truncation),
        "`truncation`",
        "1 <= truncation <= horizon",
    )
    assert str(truncation) in message


@pytest.mark.parametrize("name", WINDOWED)
def test_truncation_longer_than_horizon(name):
    raises(
        lambda: build_estimator(name, good_system(), truncation=HORIZON + 1),
        f"`truncation`={HORIZON + 1}",
        f"use truncation <= {HORIZON}, or full_bptt / es",
    )


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("truncation", [2.5, "2", None])
def test_truncation_not_int(name, truncation):
    raises(lambda: build_estimator(name, good_system(), truncation=truncation), "`truncation`", "1 <= truncation")


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("num_particles", [1, 3])
def test_odd_particles_with_antithetic(name, num_particles):
    raises(
        lambda: build_estimator(name, good_system(), num_particles=num_particles, antithetic=True),
        f"`num_particles`={num_particles} is odd",
        f"such as {num_particles + 1}, or antithetic=False",
    )


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("num_particles", [0, -2, 4.0, None])
def test_particles_not_positive(name, num_particles):
    raises(
        lambda: build_estimator(name, good_system(), num_particles=num_particles),
        f"`num_particles` must be a positive int, got {num_particles!r}",
        "use an even int >= 2, e.g. num_particles=64",
    )


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("antithetic", ["yes", None, 1])
def test_antithetic_not_bool(name, antithetic):
    raises(
        lambda: build_estimator(name, good_system(), antithetic=antithetic),
        f"`antithetic` must be True or False, got {antithetic!r}",
        "pairs (+eps, -eps)",
        TypeError,
    )


@pytest.mark.parametrize("name", ES_FAMILY)
@pytest.mark.parametrize("sigma", [0.0, -0.1, math.nan, math.inf, True, "0.1", None, np.ones(2)])
def test_sigma_not_positive(name, sigma):
    raises(lambda: build_estimator(name, good_system(), sigma=sigma), "`sigma` must be a positive", "try sigma=0.1")


@pytest.mark.parametrize("sigma", [0.1, np.float32(0.1), jnp.asarray(0.1), 1])
def test_sigma_accepts_real_numbers(sigma):
    build_estimator("pes", good_system(), sigma=sigma)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
@pytest.mark.parametrize("num_workers", [0, -1, 1.5])
def test_num_workers_not_positive(name, num_workers):
    raises(
        lambda: build_estimator(name, good_system(), num_workers=num_workers),
        f"`num_workers` must be a positive int, got {num_workers!r}",
        "use 1 or more, e.g. num_workers=8",
    )


@pytest.mark.parametrize("num_directions", [0, -1, 2.5])
def test_forward_gradient_num_directions_not_positive(num_directions):
    raises(
        lambda: build_estimator("forward_gradient", good_system(), num_directions=num_directions),
        f"`num_directions` must be a positive int, got {num_directions!r}",
        "use an int >= 1",
    )


@pytest.mark.parametrize("order", [0, -1, 1.5, None])
def test_snap_order_not_positive(order):
    raises(
        lambda: build_estimator("snap", good_system(), order=order),
        f"`order` must be a positive int, got {order!r}",
        "e.g. order=1",
    )


@pytest.mark.parametrize("name", ["rtrl", "snap"])
@pytest.mark.parametrize("sparse", ["yes", 1, 0.0])
def test_sparse_not_bool_or_none(name, sparse):
    raises(
        lambda: build_estimator(name, good_system(), sparse=sparse),
        f"`sparse` must be True, False or None, got {sparse!r}",
        "pass sparse=None to pick the layout automatically",
    )


@pytest.mark.parametrize("epsilon", [0.0, -1e-7, math.nan, "1e-7"])
def test_uoro_epsilon_not_positive(epsilon):
    raises(
        lambda: build_estimator("uoro", good_system(), epsilon=epsilon),
        "`epsilon` must be a positive",
        "try epsilon=1e-7",
    )


@pytest.mark.parametrize("hidden", [0, -4, 8.0])
def test_dni_mlp_synthesizer_hidden_not_positive(hidden):
    raises(
        lambda: unroll.mlp_synthesizer(hidden=hidden),
        f"`hidden` must be a positive int, got {hidden!r}",
        "e.g. hidden=64",
    )


@pytest.mark.parametrize("budget", [0, -3, 2.5, None, True])
def test_memory_budget_below_the_feasible_minimum(budget):
    raises(
        lambda: unroll.checkpointed_bptt(good_system(), memory_budget=budget),
        f"`memory_budget` must be a positive int, got {budget!r}",
        "the feasible minimum is 1 (e.g. memory_budget=10)",
    )


@pytest.mark.parametrize("budget", ["3", "64 mb"])
def test_memory_budget_bytes_without_a_unit(budget):
    raises(
        lambda: unroll.checkpointed_bptt(good_system(), memory_budget=budget),
        f"`memory_budget`={budget!r} is not a size in bytes",
        "(e.g. memory_budget='64MiB'), or pass a count of states as an int (e.g. memory_budget=10)",
    )


@pytest.mark.parametrize("num_episodes", [0, -1, 1.5])
def test_exact_gradient_num_episodes(num_episodes):
    raises(
        lambda: unroll.exact_gradient(good_system(), theta(), KEY, num_episodes=num_episodes),
        f"`num_episodes` must be a positive int, got {num_episodes!r}",
        "e.g. num_episodes=1",
    )


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_state_of_another_estimator_fails_at_trace_time(name):
    """``estimate`` given the state of an estimator with other ``num_workers``."""
    other = jax.eval_shape(build_estimator(name, good_system(), num_workers=2).init, theta(), KEY)
    est = build_estimator(name, good_system())
    raises(
        lambda: jax.eval_shape(est.estimate, theta(), other, KEY),
        "`state` holds workers of shape (2,",
        "pass the state returned by this estimator's own init",
    )


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
    raises(lambda: build_or_exact(name, system), "`system.horizon` must be a positive Python int", "horizon=100")


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
    raises(lambda: build_or_exact(name, system), "step`", "unroll.System(", TypeError)


# --------------------------------------------------------------------------- trace time (init)

LOSS_FIX = "reduce it to a scalar with .mean() or .sum()"
FLOAT_FIX = "make it floating point, e.g. loss.astype(jnp.float32)"
STATE_FIX = "each state leaf must keep its shape and dtype"
BAD_STEPS = {  # step_fn(state, loss) -> what the bad step returns; the words its error must contain
    # a vector loss (forgot to reduce)
    "non_scalar_loss": (lambda state, loss: (state, state[0]), "float scalar loss, got float64[3]", LOSS_FIX),
    "shape_1_loss": (lambda state, loss: (state, jnp.reshape(loss, (1,))), "float scalar loss", LOSS_FIX),
    # an integer loss: a jnp int scalar and a Python int; a bool; a complex loss
    "int_loss": (
        lambda state, loss: (state, jnp.round(loss).astype(jnp.int32)),
        "float scalar loss, got int32[]",
        FLOAT_FIX,
    ),
    "python_int_loss": (lambda state, loss: (state, 3), "float scalar loss", FLOAT_FIX),
    "bool_loss": (lambda state, loss: (state, loss > 0), "float scalar loss, got bool[]", FLOAT_FIX),
    "complex_loss": (lambda state, loss: (state, loss + 1j), "float scalar loss, got complex128[]", "jnp.abs(z) ** 2"),
    # the state changes shape (concatenation), dtype or structure; step returns no pair
    "state_shape": (
        lambda state, loss: ((jnp.concatenate([state[0], state[0]]),), loss),
        "changed state[0]",
        STATE_FIX,
    ),
    "state_dtype": (lambda state, loss: ((state[0].astype(jnp.float32),), loss), "changed state[0]", STATE_FIX),
    "state_structure": (
        lambda state, loss: ((state[0], state[0]), loss),
        "pytree structure",
        "return the same structure",
    ),
    "not_a_pair": (
        lambda state, loss: (state, loss, loss),
        "must return a pair (state, loss)",
        "return `new_state, loss`",
    ),
}


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
@pytest.mark.parametrize("bad", BAD_STEPS)
def test_bad_step_raises_at_init(name, bad):
    step_fn, words, fix = BAD_STEPS[bad]
    est = build_estimator(name, with_step(step_fn))  # construction cannot know yet
    raises(lambda: est.init(theta(), KEY), "`system.step`", fix, TypeError)
    raises(lambda: jax.jit(est.init)(theta(), KEY), words, fix, TypeError)  # also when init is traced under jit


@pytest.mark.parametrize("bad", BAD_STEPS)
def test_bad_step_raises_in_exact_gradient(bad):
    step_fn, words, fix = BAD_STEPS[bad]
    raises(lambda: unroll.exact_gradient(with_step(step_fn), theta(), KEY), words, fix, TypeError)


def with_init(init_fn, horizon=HORIZON):
    """``good_system`` whose ``init`` returns ``init_fn(state)`` instead of its state."""
    base = good_system(horizon)
    return unroll.System(init=lambda theta, key: init_fn(base.init(theta, key)), step=base.step, horizon=horizon)


BAD_INITS = {
    # init returns something that is not an array
    "not_an_array": (
        lambda state: ("h",),
        "`system.init(theta, key)` cannot be traced",
        "it returned a str at state[0]; it must return a pytree of arrays computed with jax from theta and key",
    ),
}


@pytest.mark.parametrize("name", ALL)
def test_an_error_inside_step_is_raised_as_it_is(name):
    """init's state does not fit step (a hidden state of the wrong size), so step's matmul fails
    while init traces it: JAX's own TypeError comes out, blaming nothing else, with a note that
    says what step was traced on (the state's shapes)."""
    system = with_init(lambda state: (jnp.zeros(5),))
    call = (
        (lambda: unroll.exact_gradient(system, theta(), KEY))
        if name == "exact_gradient"
        else (lambda: build_estimator(name, system).init(theta(), KEY))
    )
    with pytest.raises(TypeError) as info:
        call()
    assert "dot_general requires contracting dimensions to have the same shape" in str(info.value)
    assert "init returns" not in str(info.value) and info.value.__cause__ is None
    assert any(
        "raised while unroll traced `system.step(theta, state, t)` on the state system.init returns "
        "(state[0]: float64[5])" in note
        for note in info.value.__notes__
    )


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("bad", BAD_INITS)
def test_bad_init_raises_at_init(name, bad):
    init_fn, words, fix = BAD_INITS[bad]
    system = with_init(init_fn)
    if name == "exact_gradient":
        raises(lambda: unroll.exact_gradient(system, theta(), KEY), words, fix, TypeError)
    else:
        raises(lambda: build_estimator(name, system).init(theta(), KEY), words, fix, TypeError)


# --------------------------------------------------------------------------- theta

THETA_FIX = "jnp.asarray(x, jnp.float32)"
BAD_THETA_LEAVES = {  # a bad theta['b']: what the message says about it, and its fix
    "int_array": (jnp.asarray([1, 0, -1], jnp.int32), "`theta['b']` has dtype int32", THETA_FIX),
    "python_int": (3, "`theta['b']` is a Python int (3)", "write 3.0 or jnp.asarray(3, jnp.float32)"),
    "bool_array": (np.array([True, False, True]), "`theta['b']` has dtype bool", THETA_FIX),
    "string": ("0.1", "`theta['b']` is a str ('0.1')", "theta must be a pytree of float arrays"),
    "complex": (jnp.ones(3, jnp.complex64), "`theta['b']` has dtype complex64", "split it into two real leaves"),
    "function": (jnp.tanh, "`theta['b']` is a function", "a function is not a parameter: close over it"),
    "key": (jax.random.key(0), "`theta['b']` has dtype key<fry>", "a PRNG key is not a parameter"),
}


def theta_with(leaf):
    th = theta()
    th["b"] = leaf
    return th


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
@pytest.mark.parametrize("bad", BAD_THETA_LEAVES)
def test_bad_theta_leaf_raises_at_init(name, bad):
    leaf, words, fix = BAD_THETA_LEAVES[bad]
    est = build_estimator(name, good_system())
    raises(lambda: est.init(theta_with(leaf), KEY), words, fix, TypeError)


@pytest.mark.parametrize("bad", BAD_THETA_LEAVES)
def test_bad_theta_leaf_raises_in_exact_gradient(bad):
    leaf, words, fix = BAD_THETA_LEAVES[bad]
    raises(lambda: unroll.exact_gradient(good_system(), theta_with(leaf), KEY), words, fix, TypeError)


def _equinox_cell():
    eqx = pytest.importorskip("equinox")
    return eqx.nn.MLP(3, 3, 4, 1, activation=jax.nn.tanh, key=jax.random.key(0))


def _nnx_model():
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(3, 3, rngs=rngs)
            self.dropout = nnx.Dropout(0.1, rngs=rngs)

    return Net(nnx.Rngs(0))


def _nnx_state():
    nnx = pytest.importorskip("flax.nnx")
    return nnx.split(_nnx_model())[1]  # the whole state: parameters and the rng streams


ECOSYSTEM_THETA = {  # theta['b'] is a whole model: the bad leaf inside it, and that library's fix
    "equinox_activation": (
        _equinox_cell,
        "`theta['b'].activation` is a function",
        "`theta['b']` is an equinox MLP; pass only the module's arrays as theta: "
        "`params, static = eqx.partition(model, eqx.is_inexact_array)`",
    ),
    "nnx_rng_count": (
        _nnx_model,
        "`theta['b'].dropout.rngs.count.value` has dtype uint32",
        "`theta['b']` is a flax Net; pass only the parameters as theta: "
        "`graphdef, params, rest = nnx.split(model, nnx.Param, ...)`",
    ),
    "nnx_whole_state": (
        _nnx_state,
        "`theta['b']['dropout']['rngs']['count'].value` has dtype uint32",
        "`theta['b']` is a flax State; pass only the parameters as theta: `graphdef, params, rest = nnx.split(",
    ),
}


@pytest.mark.parametrize("case", ECOSYSTEM_THETA)
def test_ecosystem_models_as_theta_point_to_their_split(case):
    make, words, fix = ECOSYSTEM_THETA[case]
    est = build_estimator("pes", good_system())
    raises(lambda: est.init(theta_with(make()), KEY), words, fix, TypeError)
    raises(lambda: unroll.exact_gradient(good_system(), theta_with(make()), KEY), words, fix, TypeError)


@pytest.mark.parametrize("empty", [{}, (), None])
def test_empty_theta(empty):
    est = build_estimator("pes", good_system())
    raises(lambda: est.init(empty, KEY), "`theta`", "pass the outer parameters as a pytree of float arrays", ValueError)


def test_python_float_and_float_array_leaves_are_fine():
    theta_leaves = theta_with(0.1 * np.ones(3))  # numpy float64 array
    jax.eval_shape(build_estimator("pes", good_system()).init, theta_leaves, KEY)
    scalar = unroll.System(
        init=lambda th, key: th["a"] * jnp.ones(()), step=lambda th, s, t: (s, s * th["a"]), horizon=2
    )
    jax.eval_shape(unroll.full_bptt(scalar).init, {"a": 0.5}, KEY)  # a Python float leaf


# --------------------------------------------------------------------------- sharding (trace time)


def duplicate_mesh(num_devices):
    """A 1-D mesh of ``num_devices`` entries on this process's one device: enough for the
    trace-time divisibility check (nothing is compiled for it)."""
    return Mesh(np.array([jax.devices()[0]] * num_devices), ("d",))


@pytest.mark.parametrize(
    "num_workers, num_particles, spec, words, fix",
    [
        (3, 4, None, "splits the workers axis of the estimator state (size 3", "make num_workers a multiple of 2"),
        (
            1,
            6,
            P(None, "d"),
            "splits the particles axis of the estimator state (size 6",
            "make num_particles a multiple of 4",
        ),
    ],
)
def test_mesh_not_dividing_workers_or_particles_fails_at_trace_time(num_workers, num_particles, spec, words, fix):
    mesh = duplicate_mesh(2 if spec is None else 4)
    est = unroll.shard(
        build_estimator("pes", good_system(), num_workers=num_workers, num_particles=num_particles), mesh, spec
    )
    message = raises(lambda: jax.eval_shape(est.init, theta(), KEY), words, fix, ValueError)
    assert "`spec`=" in message and "or shard the other axis" in message


# --------------------------------------------------------------------------- training (before any compile)


def train_with(**overrides):
    kwargs = {"num_steps": 3, "progress": False}
    kwargs.update(overrides)
    return lambda: unroll.train(build_estimator("full_bptt", good_system()), optax.sgd(0.1), theta(), KEY, **kwargs)


@pytest.mark.parametrize(
    "overrides, words, fix, error",
    [
        ({"num_steps": 0}, "`num_steps` must be a positive int, got 0", "Pass an int >= 1", ValueError),
        ({"num_steps": 2.5}, "`num_steps` must be a positive int, got 2.5", "Pass an int >= 1", TypeError),
        ({"num_seeds": 0}, "`num_seeds` must be a positive int, got 0", "Pass an int >= 1", ValueError),
        ({"on_nonfinite": "ignore"}, "`on_nonfinite`='ignore'", "pass on_nonfinite='stop'", ValueError),
        ({"eval_every": 2}, "`eval_every` is set but `eval_fn` is None", "pass eval_fn=lambda theta:", ValueError),
        (
            {"eval_every": -1, "eval_fn": lambda th: {}},
            "`eval_every` must be a positive int, got -1",
            "Pass 0",
            ValueError,
        ),
        (
            {"eval_every": 2.5, "eval_fn": lambda th: {}},
            "`eval_every` must be a positive int, got 2.5",
            "Pass 0",
            TypeError,
        ),
        (
            {"checkpoint_every": 3},
            "`checkpoint_every`=3 is set but `checkpoint` is None",
            "pass checkpoint='run.npz'",
            ValueError,
        ),
        (
            {"checkpoint": "run.npz", "checkpoint_every": -1},
            "`checkpoint_every` must be a positive int, got -1",
            "Pass an int >= 1",
            ValueError,
        ),
    ],
)
def test_bad_train_arguments(overrides, words, fix, error):
    raises(train_with(**overrides), words, fix, error)


def test_eval_fn_not_callable():
    raises(
        train_with(eval_fn={"norm": 1.0}, eval_every=1),
        "`eval_fn` must be a function theta -> dict",
        "pass e.g. eval_fn=lambda theta:",
        TypeError,
    )


# --------------------------------------------------------------------------- diagnostics and tasks


@pytest.mark.parametrize(
    "call, words, fix",
    [
        (
            lambda: lyapunov_spectrum(good_system(), theta(), KEY, num_steps=10, warmup=-1),
            "`warmup` must be an int >= 0, got -1",
            "e.g. warmup=1000",
        ),
        (
            lambda: lyapunov_spectrum(good_system(), theta(), KEY, num_steps=0),
            "`num_steps` must be a positive int, got 0",
            "e.g. 10_000",
        ),
        (
            lambda: lyapunov_spectrum(good_system(), theta(), KEY, num_steps=10, k=4),
            "`k`=4 exceeds the state's real dimension N=3",
            "pass k <= 3",
        ),
        (
            lambda: diagnostics.jacobian_spectrum(good_system(), theta(), KEY, num_steps=0),
            "`num_steps` must be a positive int, got 0",
            "e.g. 100",
        ),
        (
            lambda: diagnostics.estimate_samples(build_estimator("pes", good_system()), theta(), KEY, num_samples=0),
            "`num_samples` must be a positive int, got 0",
            "e.g. 1000",
        ),
        (
            lambda: diagnostics.estimate_samples(
                build_estimator("pes", good_system()), theta(), KEY, 4, windows_per_sample=0
            ),
            "`windows_per_sample` must be a positive int, got 0",
            "Pass an int >= 1",
        ),
        (
            lambda: diagnostics.gradient_vs_horizon(good_system, theta(), KEY, [2, 4], num_episodes=0),
            "`num_episodes` must be a positive int, got 0",
            "Pass an int >= 1",
        ),
    ],
)
def test_bad_diagnostics_arguments(call, words, fix):
    raises(call, words, fix, ValueError)


@pytest.mark.parametrize(
    "make, words, fix",
    [
        (
            lambda: tasks.influence_balancing(num_positive=30),
            "`num_positive`=30 must lie in [0, num_units=23]",
            "e.g. num_positive=10",
        ),
        (
            lambda: tasks.flip_flop(pulse_probability=0.0),
            "`pulse_probability`=0.0 must lie in (0, 1]",
            "e.g. pulse_probability=0.05",
        ),
        (
            lambda: tasks.python_docs_corpus(validation_fraction=1.0),
            "`validation_fraction`=1.0 must lie in (0, 1)",
            "e.g. validation_fraction=0.1",
        ),
        (
            lambda: tasks.lorenz(horizon=100, num_observed=50),
            "`num_observed`=50 must exceed `horizon`=100",
            "pass num_observed > 100",
        ),
        (
            lambda: tasks.copy_task(cell="transformer"),
            "`cell`='transformer' is not a known cell",
            "choose one of tanh, gru, lstm, lru",
        ),
        (
            lambda: tasks.learned_optimizer("imagenet"),
            "`problem`='imagenet' is not a known inner problem",
            "choose one of",
        ),
        (lambda: tasks.copy_task(hidden=0), "`hidden` must be a positive int, got 0", "Pass an int >= 1"),
    ],
)
def test_bad_task_options(make, words, fix):
    raises(make, words, fix, ValueError)


# --------------------------------------------------------------------------- CLI: one line, exit code 2


def run_cli(argv, capsys):
    """``unroll ARGV``: (exit code, stderr stripped); argparse's own errors exit by SystemExit."""
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    "argv, words, fix",
    [
        (
            ["compare", "influence-balancing", "--seeds", "0"],
            "`seeds` must be a positive int, got 0",
            "Pass an int >= 1",
        ),
        (
            ["compare", "influence-balancing", "--horizon", "0"],
            "`horizon` must be a positive int, got 0",
            "Pass an int >= 1",
        ),
        (["compare", "copy", "--horizon", "5"], "`horizon`=5 must exceed 2 * length = 10", "copy task"),
        (["compare", "--no-progress"], "no task given", "set `task` in the --config file"),
        (["compare", "influence-balancing", "--seed", "-1"], "`seed`=-1 must be a non-negative int", "e.g. --seed 0"),
        (
            ["compare", "influence-balancing", "--checkpoint-every", "0"],
            "`checkpoint_every` must be a positive int",
            "Pass an int >= 1",
        ),
    ],
)
def test_cli_bad_arguments_are_one_line_and_exit_2(argv, words, fix, capsys, tmp_path):
    code, err = run_cli(argv + ["--out", str(tmp_path / "x")], capsys)
    assert code == 2 and words in err and fix in err, err
    assert "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "text, words, fix",
    [
        (None, "cannot read it", "--config"),
        ('task = "copy"\ntask_options = 3\n', "`task_options` must be a table", "e.g. [task_options] hidden = 32"),
        ('task = "copy"\nseeds = "two"\n', "`seeds` must be a positive int, got 'two'", "Pass an int >= 1"),
        (
            'task = "copy"\n[task_options]\ncell = "transformer"\n',
            "`cell`='transformer' is not a known cell",
            "choose one of",
        ),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2(text, words, fix, capsys, tmp_path):
    config = tmp_path / "bad.toml"
    if text is not None:
        config.write_text(text)
    code, err = run_cli(["compare", "--config", str(config), "--out", str(tmp_path / "x"), "--no-progress"], capsys)
    assert code == 2 and words in err and fix in err, err
    assert "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    "argv, words",
    [
        (["compare", "influence-balancing", "--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["compare", "copy", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_argparse_errors_are_one_line_and_exit_2(argv, words, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and words in err and "--help" in err, err
    assert "\n" not in err and "Traceback" not in err, err


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_a_positional_call_says_to_name_the_arguments(name):
    """Every registered constructor is ``system`` then keyword-only arguments; a positional
    call fails at once, naming the keyword the value would have to be given as."""
    constructor = REGISTERED[name].constructor
    called = constructor.__name__
    first = list(inspect.signature(constructor).parameters)[1]  # the first keyword after `system`
    message = raises(
        lambda: constructor(good_system(), 3),
        f"`{called}` takes `system` and then keyword arguments only",
        "name the argument(s)",
        error=TypeError,
    )
    assert f"{called}(system, {first}=3)" in message, message


def test_unrolls_own_checks_raise_its_usage_errors():
    """Every check in unroll/ raises `BadValue` / `BadType` (a ValueError / TypeError that the CLI
    prints as one line, exit 2), never a bare ValueError or TypeError, which the CLI would show
    as a traceback: a new check written the old way fails here."""
    import ast
    import pathlib

    bare = []
    for path in pathlib.Path(unroll.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                name = getattr(node.exc.func, "id", None)
                if name in ("ValueError", "TypeError"):
                    bare.append(f"{path.name}:{node.lineno}: raise {name}(...)")
    assert not bare, "use unroll._errors.BadValue / BadType:\n" + "\n".join(bare)
