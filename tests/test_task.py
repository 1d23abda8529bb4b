"""``unroll.Task``: only system and theta are required, and every default is the documented one."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.systems import rnn_system, rnn_theta
from unroll import task as task_module
from unroll.task import EVALUATION_EPISODES, EVALUATION_SEED, estimator_memory, standard_settings

KEY = jax.random.key(0)


def small(horizon=20, n=3):
    return rnn_system(n=n, m=2, horizon=horizon), rnn_theta(n=n, m=2)


def test_only_system_and_theta_are_required_and_the_rest_is_keyword_only():
    system, theta = small()
    task = unroll.Task(system, theta)
    assert task.system is system and task.default_steps == 300 and task.default_seeds == 2
    with pytest.raises(TypeError, match="positional"):
        unroll.Task(system, theta, "name")


def test_the_default_evaluation_is_the_mean_episode_loss_over_64_fixed_episodes():
    system, theta = small()
    objective = unroll.Task(system, theta).evaluate(theta)["objective"]
    keys = jax.random.split(jax.random.key(EVALUATION_SEED), EVALUATION_EPISODES)
    direct = np.mean([float(unroll.episode_loss(system, theta, k)) for k in keys])
    np.testing.assert_allclose(float(objective), direct, rtol=1e-12)


def test_the_default_optimizer_is_adam_with_a_cosine_decayed_learning_rate():
    system, theta = small()
    for given, rate in ((None, 1e-2), (3e-3, 3e-3)):
        task = unroll.Task(system, theta) if given is None else unroll.Task(system, theta, learning_rate=given)
        ours, reference = task.optimizer(50), optax.adam(optax.cosine_decay_schedule(rate, 50, alpha=0.01))
        state, ref_state = ours.init(theta), reference.init(theta)
        grad = jax.tree_util.tree_map(jnp.ones_like, theta)
        for _ in range(5):
            update, state = ours.update(grad, state, theta)
            expected, ref_state = reference.update(grad, ref_state, theta)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a, b), update, expected)
        assert f"learning rate {rate:g} cosine-decayed" in task.optimizer_description
    fixed = optax.sgd(0.1)
    assert unroll.Task(system, theta, optimizer=fixed).optimizer(7) is fixed


@pytest.mark.parametrize("horizon, truncation", [(100, 10), (20, 10), (19, 9), (12, 6), (1, 1)])
def test_the_default_truncation_is_scaled_to_a_short_horizon(horizon, truncation):
    system, theta = small(horizon)
    task = unroll.Task(system, theta)
    assert task.settings == standard_settings(truncation=truncation)
    given = unroll.Task(system, theta, settings={"num_workers": 2})
    assert given.settings == {**standard_settings(truncation=truncation), "num_workers": 2}


def test_the_default_name_is_the_module_that_defines_step():
    system, theta = small()
    assert unroll.Task(system, theta).name == "systems"  # tests/systems.py defines rnn_system's step
    assert unroll.Task(system, theta, name="mine").name == "mine"


def test_estimator_memory_follows_its_formulas():
    """Closed forms of the dominant term: state [n] float64 (8n bytes), theta's n_theta floats."""
    n, horizon = 4, 30
    system, theta = small(horizon, n)
    n_theta = sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(theta))
    s, p = 8 * n, 8 * n_theta
    settings = standard_settings(workers=3, particles=6, truncation=5, directions=2, memory_budget=4)
    expected = {
        "full-bptt": 3 * horizon * s,
        "checkpointed-bptt": 3 * 4 * s,
        "tbptt": 3 * 5 * s,
        "rtrl": 3 * n * n_theta * 8,
        "uoro": 3 * (s + p),
        "forward": 3 * 2 * (s + p),
        "pes": 3 * 6 * (s + p),
    }
    assert {name: estimator_memory(name, system, theta, settings) for name in expected} == expected


def test_rtrl_is_left_out_when_its_influence_matrix_is_over_the_memory_limit():
    """n = 32: rtrl's influence (10 workers x 32 x 1,120 floats x 8 B = 2.7 MiB) is over 1 MiB,
    while every other standard estimator fits; the reason names the figures."""
    system, theta = small(horizon=20, n=32)
    settings = standard_settings(particles=2)
    rtrl = estimator_memory("rtrl", system, theta, settings)
    others = [estimator_memory(name, system, theta, settings) for name in ("full-bptt", "tbptt", "uoro", "pes", "nres")]
    assert max(others) < 2**20 < rtrl
    task = unroll.Task(system, theta, settings=settings, memory_limit="1MiB")
    assert task.default_estimators == ["full-bptt", "tbptt-10", "uoro", "pes", "nres"]
    assert list(task.left_out) == ["rtrl"] and "over the memory limit of 1 MiB" in task.left_out["rtrl"]
    assert "rtrl" in unroll.Task(system, theta, settings=settings).default_estimators  # the default 1 GiB


def test_checkpointed_bptt_stands_in_for_full_bptt_over_the_limit():
    system, theta = small(horizon=2000, n=32)
    task = unroll.Task(system, theta, settings=standard_settings(particles=2), memory_limit="3MiB")
    assert "full-bptt" in task.left_out and task.default_estimators[0] == "checkpointed-bptt"


def test_the_memory_model_bounds_the_compiled_estimate_from_below():
    """The model counts the dominant term only: XLA's compiled estimate holds at least that much
    (arguments and temporaries), and for rtrl's influence and full-bptt's trajectory not 8x more."""
    system, theta = small(horizon=64, n=16)
    settings = standard_settings(workers=2, particles=4, truncation=8)
    for name in ("full-bptt", "rtrl"):
        estimator = unroll.registry.build(name, system, **settings)
        state = estimator.init(theta, KEY)
        compiled = jax.jit(estimator.estimate).lower(theta, state, KEY).compile().memory_analysis()
        held = compiled.argument_size_in_bytes + compiled.temp_size_in_bytes
        model = estimator_memory(name, system, theta, settings)
        assert model <= held < 8 * model, (name, model, held)


@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        ({"learning_rate": 0.0}, ValueError, "`Task.learning_rate`=0.0 must be a positive number"),
        ({"optimizer": "adam"}, TypeError, "`Task.optimizer` must be an optax GradientTransformation"),
        ({"evaluate": 3}, TypeError, "`Task.evaluate` must be a function theta -> {'objective'"),
        ({"default_steps": 0}, ValueError, "`Task.default_steps`"),
        ({"memory_limit": "lots"}, ValueError, "`Task.memory_limit`='lots' must be a size in bytes such as '1GiB'"),
        ({"name": ""}, TypeError, "`Task.name` must be a non-empty str"),
    ],
)
def test_bad_task_fields_fail_at_construction(kwargs, error, needle):
    system, theta = small()
    with pytest.raises(error, match=__import__("re").escape(needle)):
        unroll.Task(system, theta, **kwargs)


def test_a_bad_system_fails_at_construction():
    system, theta = small()
    with pytest.raises(TypeError, match="`system.step` must return a float scalar loss"):
        unroll.Task(system._replace(step=lambda th, s, t: (s, s)), theta)
    assert task_module.scaled_truncation(7) == 3
