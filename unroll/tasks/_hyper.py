"""Hyperparameter tuning through a whole training run.

``lr_schedule``: SGD on a small, ill-conditioned linear regression (curvatures spread over
``condition = 1000``, label noise 1) with the learning-rate schedule
``lr_t = lr0 / (1 + decay t)``, theta ``= [log10 lr0, log10 decay]``. Minibatch noise in
the stiff directions rewards a fast decay over a few steps, progress in the flat ones a
slow decay over the whole run: the short-horizon bias of Wu et al. (2018). The inner state is
the regression weights (and the episode key that draws minibatches); the step loss is
the full-batch training loss after the step (capped at ``loss_cap`` so divergent
schedules score a large finite loss). ``lr_schedule_grid`` evaluates the meta-objective
on a grid, which gives the true optimum to compare estimators against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll._system import System, check_positive_int
from unroll.task import Task, adam_cosine, standard_settings
from unroll.tasks.evaluation import episode_evaluator


def regression_data(
    num_examples: int = 64, dim: int = 16, noise: float = 1.0, seed: int = 0, condition: float = 1000.0
):
    """``(X [n, d], y [n])``: ``X ~ N(0, 1)`` with column ``j`` scaled by
    ``condition ** (-j / (2 (d - 1)))`` (curvatures spread over ``condition``),
    ``y = X w* + noise N(0, 1)``, ``w* ~ N(0, 1)`` (numpy float64)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_examples, dim)) * condition ** (-np.arange(dim) / (2 * max(dim - 1, 1)))
    return x, x @ rng.normal(size=dim) + noise * rng.normal(size=num_examples)


def lr_schedule(
    horizon: int = 200,
    batch_size: int = 8,
    num_examples: int = 64,
    dim: int = 16,
    seed: int = 0,
    initial=(-2.0, -1.0),
    loss_cap: float = 1e3,
    dtype=jnp.float32,
    num_eval_episodes: int = 32,
    condition: float = 1000.0,
    noise: float = 1.0,
):
    """Returns ``(system, theta, evaluate)``; ``evaluate(theta)`` is the mean episode loss
    (``"objective"``) over fixed minibatch keys."""
    horizon = check_positive_int(horizon, "horizon")
    batch_size = check_positive_int(batch_size, "batch_size")
    x_np, y_np = regression_data(num_examples, dim, noise, seed, condition)

    def train_loss(w, x, y):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    def init(theta, key):
        return jnp.zeros(dim, jnp.result_type(theta)), key

    def step(theta, state, t):
        w, key = state
        x, y = jnp.asarray(x_np, w.dtype), jnp.asarray(y_np, w.dtype)
        batch = jax.random.choice(jax.random.fold_in(key, t), num_examples, (batch_size,), replace=False)
        lr = 10.0 ** theta[0] / (1.0 + 10.0 ** theta[1] * t)
        w = w - lr * jax.grad(train_loss)(w, x[batch], y[batch])
        loss = train_loss(w, x, y)
        return (w, key), jnp.minimum(jnp.where(jnp.isfinite(loss), loss, loss_cap), loss_cap)

    system = System(init, step, horizon)
    evaluate = episode_evaluator(system, jax.random.key(seed + 10_000), num_eval_episodes)
    return system, jnp.asarray(initial, dtype), evaluate


def lr_schedule_grid(evaluate, log_lr0: np.ndarray, log_decay: np.ndarray):
    """The meta-objective on the grid ``log_lr0 x log_decay`` (vmapped ``evaluate``):
    ``(losses [len(log_lr0), len(log_decay)], best theta, best loss)``."""
    grid = jnp.stack(jnp.meshgrid(jnp.asarray(log_lr0), jnp.asarray(log_decay), indexing="ij"), axis=-1)
    losses = np.asarray(jax.jit(jax.vmap(jax.vmap(lambda th: evaluate(th)["objective"])))(grid))
    i, j = np.unravel_index(np.argmin(losses), losses.shape)
    return losses, np.asarray([log_lr0[i], log_decay[j]]), float(losses[i, j])


def mlp_hyperparameters(
    horizon: int = 200,
    batch_size: int = 64,
    initial=(-1.0, 0.0, -4.0),
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_episodes: int = 16,
):
    """Learning rate, momentum and weight decay of SGD training a 64-32-10 tanh MLP on
    scikit-learn's digits: theta ``= [log10 lr, logit momentum, log10 weight decay]``;
    each step ``v <- mu v + g + wd w``, ``w <- w - lr v`` on a minibatch of ``batch_size``,
    and its loss is the validation loss of the new ``w`` (297 held-out digits), so weight
    decay matters. A fresh random init per episode. Returns ``(system, theta, evaluate)``;
    ``evaluate`` adds the final validation accuracy."""
    from unroll.tasks.inner import digits, minibatch, mlp

    horizon = check_positive_int(horizon, "horizon")
    data, net = digits(), mlp((64, 32, 10))
    x, y = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)
    xv, yv = jnp.asarray(data.x_validation, dtype), jnp.asarray(data.y_validation)

    def init(theta, key):
        w = net.init(jax.random.fold_in(key, 0x7FFFFFFF), dtype)
        return w, jnp.zeros_like(w), key

    def step(theta, state, t):
        w, velocity, key = state
        lr, momentum, decay = 10.0 ** theta[0], jax.nn.sigmoid(theta[1]), 10.0 ** theta[2]
        g = jax.grad(net.loss)(w, *minibatch(key, t, x, y, batch_size))
        velocity = momentum * velocity + g + decay * w
        w = w - lr * velocity
        return (w, velocity, key), net.loss(w, xv, yv)

    system = System(init, step, horizon)
    evaluate = episode_evaluator(
        system,
        jax.random.key(seed + 10_000),
        num_eval_episodes,
        final_metrics=lambda state: {"validation_accuracy": net.accuracy(state[0], xv, yv)},
        extra=lambda theta: {
            "log10_lr": theta[0],
            "momentum": jax.nn.sigmoid(theta[1]),
            "log10_weight_decay": theta[2],
        },
    )
    return system, jnp.asarray(initial, dtype), evaluate


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "lr-schedule": ["tbptt-10", "tes", "pes", "nres", "es", "full-bptt"],
    "mlp-hyper": ["tbptt-10", "pes", "es", "full-bptt"],
}


def lr_schedule_setup(horizon: int = 200) -> Task:
    """Tune SGD's learning-rate schedule lr0 / (1 + decay t) (log10 scale) on ill-conditioned regression."""
    system, theta, evaluate = lr_schedule(horizon=horizon)
    _, best, best_loss = lr_schedule_grid(evaluate, np.linspace(-3, 0.5, 36), np.linspace(-4, 0, 21))

    def metrics(theta):
        return {**evaluate(theta), "log10_lr0": theta[0], "log10_decay": theta[1]}

    return Task(
        name="lr-schedule",
        system=system,
        theta=theta,
        evaluate=metrics,
        reference={
            "objective": "mean full-batch training loss over the run (32 fixed minibatch streams)",
            "grid_best_theta": best.tolist(),
            "grid_best_objective": best_loss,
            "grid": "log10 lr0 in linspace(-3, 0.5, 36) x log10 decay in linspace(-4, 0, 21)",
            "horizon": horizon,
        },
        settings=standard_settings(workers=4, particles=50, sigma=0.1, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["lr-schedule"],
        **adam_cosine(5e-2),
        default_steps=1000,
        default_seeds=2,
        reached=lambda theta, m: float(m["objective"]) <= 1.02 * best_loss,
    )


def mlp_hyper_setup(horizon: int = 200) -> Task:
    """Tune SGD's learning rate, momentum and weight decay training an MLP on digits."""
    system, theta, evaluate = mlp_hyperparameters(horizon=horizon)
    return Task(
        name="mlp-hyper",
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean validation loss over the run (16 fixed inits and minibatch streams)",
            "horizon": horizon,
            "theta": "[log10 lr, logit momentum, log10 weight decay]",
        },
        settings=standard_settings(workers=4, particles=32, sigma=0.1, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["mlp-hyper"],
        **adam_cosine(3e-2),
        default_steps=200,
        default_seeds=2,
    )
