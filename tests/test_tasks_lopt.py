"""Known facts of the learned-optimizer and MLP-hyperparameter tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import step_losses
from unroll import tasks
from unroll.tasks import inner, lopt

KEY = jax.random.key(0)


def test_digits_split_and_mlp():
    data = inner.digits()
    assert data.x_train.shape == (1500, 64) and data.x_validation.shape == (297, 64)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert set(np.unique(data.y_train)) == set(range(10))
    net = inner.mlp((64, 32, 10))
    assert net.num_params == 64 * 32 + 32 + 32 * 10 + 10
    w = net.init(KEY)
    assert float(net.loss(jnp.zeros_like(w), data.x_train[:50], data.y_train[:50])) == pytest.approx(np.log(10))


@pytest.mark.parametrize("problem", lopt.PROBLEMS)
def test_learned_optimizer_with_identity_output_is_sgd(problem):
    """W_out = (0 on the hidden path, c on the gradient), b_out = 0: the inner run is SGD
    with learning rate lr * c, step for step (an independent loop over the inner problem)."""
    horizon, lr, c = 6, 0.1, 0.7
    system, _, _ = tasks.learned_optimizer(problem, horizon=horizon, learning_rate=lr, dtype=jnp.float64)
    theta = lopt.sgd_theta(scale=c, dtype=jnp.float64)
    init_params, loss, _, _ = lopt.inner_problem(problem, dtype=jnp.float64)
    w, expected = init_params(KEY), []
    for t in range(horizon):
        value, g = jax.value_and_grad(loss)(w, KEY, t)
        expected.append(float(value))
        w = w - lr * c * g
    state, got = step_losses(system, theta, KEY, horizon)
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(state[0]), np.asarray(w), rtol=1e-9, atol=1e-12)


def test_learned_optimizer_meta_gradient_matches_finite_differences():
    """The whole inner run is differentiable in theta (full BPTT vs central differences)."""
    system, theta, _ = tasks.learned_optimizer("quadratic", horizon=8, dtype=jnp.float64)
    theta = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(KEY, x.shape, x.dtype), theta)
    f = lambda th: unroll.episode_loss(system, th, KEY)
    grad = jax.grad(f)(theta)
    direction = jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype), theta)
    eps = 1e-5
    plus = jax.tree_util.tree_map(lambda x, d: x + eps * d, theta, direction)
    minus = jax.tree_util.tree_map(lambda x, d: x - eps * d, theta, direction)
    fd = (f(plus) - f(minus)) / (2 * eps)
    analytic = sum(
        jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(direction))
    )
    assert float(analytic) == pytest.approx(float(fd), rel=1e-6)


def test_adam_baseline_is_tuned_on_a_grid():
    result = tasks.adam_baseline("quadratic", horizon=30, log10_learning_rates=np.linspace(-3, 0, 7), num_eval_tasks=4)
    objectives = np.asarray(result["objectives"])
    assert result["best"]["objective"] == pytest.approx(objectives.min())
    assert result["best_log10_learning_rate"] == pytest.approx(np.linspace(-3, 0, 7)[np.argmin(objectives)])
    assert objectives.min() < objectives[0]  # lr 1e-3 barely moves in 30 steps


def test_unknown_inner_problem():
    with pytest.raises(ValueError, match="problem"):
        tasks.learned_optimizer("imagenet")


def test_mlp_hyperparameters_step_is_sgd_with_momentum_and_weight_decay():
    """One run against a hand-written loop: v <- mu v + g + wd w, w <- w - lr v, the loss the
    validation loss of the new w."""
    horizon = 5
    system, _, evaluate = tasks.mlp_hyperparameters(horizon=horizon, dtype=jnp.float64, num_eval_episodes=2)
    theta = jnp.asarray([-0.5, 1.0, -2.0], jnp.float64)
    lr, mu, wd = 10**-0.5, 1 / (1 + np.exp(-1.0)), 1e-2
    data, net = inner.digits(), inner.mlp((64, 32, 10))
    x, y = jnp.asarray(data.x_train, jnp.float64), jnp.asarray(data.y_train)
    w = net.init(jax.random.fold_in(KEY, 0x7FFFFFFF), jnp.float64)
    v, expected = jnp.zeros_like(w), []
    for t in range(horizon):
        g = jax.grad(net.loss)(w, *inner.minibatch(KEY, t, x, y, 64))
        v = mu * v + g + wd * w
        w = w - lr * v
        expected.append(float(net.loss(w, data.x_validation.astype(np.float64), data.y_validation)))
    assert float(unroll.episode_loss(system, theta, KEY)) == pytest.approx(np.mean(expected), rel=1e-9)
    metrics = jax.jit(evaluate)(theta)
    assert 0.0 <= float(metrics["validation_accuracy"]) <= 1.0
    assert float(metrics["momentum"]) == pytest.approx(mu)
