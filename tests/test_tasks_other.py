"""Known facts of the Lorenz-63 and learning-rate-schedule tasks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unroll
from tests.systems import step_losses
from unroll import tasks

KEY = jax.random.key(0)


def test_lorenz_true_parameters_fit_exactly():
    system, theta, evaluate = tasks.lorenz(horizon=300, num_observed=1000, dtype=jnp.float64, num_eval_episodes=4)
    true = jnp.asarray(tasks.TRUE_PARAMS, jnp.float64)
    assert float(unroll.episode_loss(system, true, KEY)) < 1e-12
    assert float(unroll.episode_loss(system, theta, KEY)) > 1.0
    metrics = jax.jit(evaluate)(true)
    assert float(metrics["objective"]) < 1e-12 and float(metrics["param_error"]) == 0.0


def test_lorenz_trajectory_stays_on_the_attractor():
    x = tasks.lorenz_trajectory(5000)
    assert np.all(np.abs(x[:, :2]) < 30) and np.all((x[:, 2] > 0) & (x[:, 2] < 55))
    assert np.std(x[:, 0]) > 5  # it moves between the two wings


def test_lorenz_horizon_must_fit_the_observation():
    with pytest.raises(ValueError, match="num_observed"):
        tasks.lorenz(horizon=100, num_observed=50)


def test_lr_schedule_loss_at_a_grid_point_equals_a_direct_computation():
    horizon, batch = 30, 8
    system, _, _ = tasks.lr_schedule(horizon=horizon, batch_size=batch, dtype=jnp.float64)
    theta = jnp.asarray([-1.0, -0.5], jnp.float64)
    x, y = tasks.regression_data()  # the task's defaults
    w, losses = np.zeros(x.shape[1]), []
    for t in range(horizon):  # numpy SGD on the same minibatches
        idx = np.asarray(jax.random.choice(jax.random.fold_in(KEY, t), x.shape[0], (batch,), replace=False))
        grad = x[idx].T @ (x[idx] @ w - y[idx]) / batch
        w = w - 10.0**-1.0 / (1 + 10.0**-0.5 * t) * grad
        losses.append(0.5 * np.mean((x @ w - y) ** 2))
    _, got = step_losses(system, theta, KEY, horizon)
    np.testing.assert_allclose(got, losses, rtol=1e-10)
    assert float(unroll.episode_loss(system, theta, KEY)) == pytest.approx(np.mean(losses), rel=1e-10)


def test_lr_schedule_grid_finds_the_best_grid_point_and_caps_divergence():
    _, _, evaluate = tasks.lr_schedule(horizon=40, dtype=jnp.float64, num_eval_episodes=4)
    log_lr0, log_decay = np.linspace(-3, 1, 9), np.linspace(-3, 0, 4)
    losses, best, best_loss = tasks.lr_schedule_grid(evaluate, log_lr0, log_decay)
    assert losses.shape == (9, 4) and np.all(np.isfinite(losses))
    assert best_loss == losses.min()
    i, j = np.argwhere(losses == best_loss)[0]
    assert tuple(best) == (log_lr0[i], log_decay[j])
    assert 900 < losses[-1].max() <= 1e3  # lr0 = 10 diverges: the step losses are capped at 1e3
    assert float(evaluate(jnp.asarray(best))["objective"]) == pytest.approx(best_loss)
