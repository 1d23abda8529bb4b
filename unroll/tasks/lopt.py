"""Learned optimizers (Andrychowicz et al. 2016; Wichrowska et al. 2017; Metz et al. 2019):
a per-parameter MLP that maps each inner parameter's features to its update, meta-trained
through the inner training run.

Features of inner parameter ``w_i`` at step ``t``: the gradient ``g``, momenta
``m_b = b m_b + (1 - b) g`` at decays ``b`` = 0.5, 0.9, 0.99, and ``w_i`` itself
(``[g, m_0.5, m_0.9, m_0.99, w]``). The update is

    u = W_out[:H] . relu(W_1 f~ + b_1) + W_out[H:] . f + b_out,    w <- w - lr u

with ``f~`` the features divided by their root mean square over all parameters (scale
free) and ``f`` the raw features (a linear skip path). With ``W_out[:H] = 0``,
``W_out[H:] = (c, 0, 0, 0, 0)`` and ``b_out = 0`` this is SGD with learning rate ``lr c``
(``sgd_theta``), where meta-training starts by default.

Inner problems: ``"digits"`` (a 64-32-10 tanh MLP on scikit-learn's digits, minibatches of
64, a fresh random init per episode) and ``"quadratic"`` (a random 20-dimensional
quadratic ``0.5 w^T A w`` per episode, eigenvalues log-uniform in [0.01, 1]). The step loss
is the inner training loss at the current parameters (the minibatch loss for digits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll.system import System, check_positive_int
from unroll.tasks.evaluation import episode_evaluator
from unroll.tasks.inner import digits, minibatch, mlp
from unroll.tasks.setup import TaskSetup, adam_cosine, standard_settings

DECAYS = (0.5, 0.9, 0.99)
NUM_FEATURES = 2 + len(DECAYS)
PROBLEMS = ("digits", "quadratic")


def sgd_theta(hidden: int = 32, scale: float = 1.0, seed: int = 0, dtype=jnp.float32) -> dict:
    """Learned-optimizer weights equal to SGD with learning rate ``lr * scale``; the hidden
    path's input weights are random (so meta-gradients reach them), its output weights zero."""
    key = jax.random.key(seed)
    return {
        "W1": jax.random.normal(key, (NUM_FEATURES, hidden), dtype) / np.sqrt(NUM_FEATURES),
        "b1": jnp.zeros(hidden, dtype),
        "W_out": jnp.zeros(hidden + NUM_FEATURES, dtype).at[hidden].set(scale),
        "b_out": jnp.zeros((), dtype),
    }


def learned_update(theta: dict, features: jax.Array) -> jax.Array:
    """``u`` for every parameter: ``features`` is ``[P, F]``."""
    hidden = theta["W1"].shape[1]
    rms = jnp.sqrt(jnp.mean(features**2, axis=0) + 1e-12)
    h = jax.nn.relu((features / rms) @ theta["W1"] + theta["b1"])
    return h @ theta["W_out"][:hidden] + features @ theta["W_out"][hidden:] + theta["b_out"]


def _quadratic(key, dim: int, dtype):
    """``(A, w_0)`` of the episode's random quadratic."""
    k1, k2, k3 = jax.random.split(key, 3)
    q, _ = jnp.linalg.qr(jax.random.normal(k1, (dim, dim), dtype))
    eigenvalues = 10.0 ** jax.random.uniform(k2, (dim,), dtype, -2.0, 0.0)
    return (q * eigenvalues) @ q.T, jax.random.normal(k3, (dim,), dtype)


def inner_problem(problem: str, batch_size: int = 64, dim: int = 20, dtype=jnp.float32):
    """``(init_params(key) -> w_0, loss(w, key, t) -> step loss, num_params, metrics(w))``."""
    if problem == "digits":
        data, net = digits(), mlp((64, 32, 10))
        x, y = jnp.asarray(data.x_train, dtype), jnp.asarray(data.y_train)
        xv, yv = jnp.asarray(data.x_validation, dtype), jnp.asarray(data.y_validation)

        def loss(w, key, t):
            return net.loss(w, *minibatch(key, t, x, y, batch_size))

        metrics = lambda w: {"validation_accuracy": net.accuracy(w, xv, yv), "validation_loss": net.loss(w, xv, yv)}
        return lambda key: net.init(jax.random.fold_in(key, 0x7FFFFFFF), dtype), loss, net.num_params, metrics
    if problem == "quadratic":

        def loss(w, key, t):
            a, _ = _quadratic(key, dim, dtype)
            return 0.5 * w @ a @ w

        return lambda key: _quadratic(key, dim, dtype)[1], loss, dim, lambda w: {}
    raise ValueError(f"`problem`={problem!r} is not a known inner problem; choose one of {', '.join(PROBLEMS)}.")


def learned_optimizer(
    problem: str = "digits",
    horizon: int = 200,
    learning_rate: float = 0.1,
    hidden: int = 32,
    batch_size: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_tasks: int = 16,
):
    """Meta-training a learned optimizer on ``problem``: returns ``(system, theta,
    evaluate)``; theta starts at SGD with ``learning_rate`` (``sgd_theta``), the state is
    ``(inner params, momenta [3, P], episode key)``, ``evaluate`` gives the mean inner
    training loss over ``num_eval_tasks`` held-out inner tasks (``"objective"``) and, for
    digits, the validation accuracy and loss of the final inner parameters."""
    horizon = check_positive_int(horizon, "horizon")
    hidden = check_positive_int(hidden, "hidden")
    init_params, loss, num_params, metrics = inner_problem(problem, batch_size, dtype=dtype)
    decays = jnp.asarray(DECAYS, dtype)

    def init(theta, key):
        return init_params(key), jnp.zeros((len(DECAYS), num_params), dtype), key

    def step(theta, state, t):
        w, momenta, key = state
        value, g = jax.value_and_grad(loss)(w, key, t)
        momenta = decays[:, None] * momenta + (1 - decays[:, None]) * g
        features = jnp.concatenate([g[:, None], momenta.T, w[:, None]], axis=1)
        return (w - learning_rate * learned_update(theta, features), momenta, key), value

    system = System(init, step, horizon)
    evaluate = episode_evaluator(
        system, jax.random.key(seed + 10_000), num_eval_tasks, final_metrics=lambda state: metrics(state[0])
    )
    return system, sgd_theta(hidden, 1.0, seed, dtype), evaluate


def adam_system(problem: str = "digits", horizon: int = 200, batch_size: int = 64, dtype=jnp.float32) -> System:
    """The same inner training run with Adam (b1 0.9, b2 0.999): theta is ``log10`` of its
    learning rate, so the baseline can be tuned (``adam_baseline``)."""
    init_params, loss, num_params, _ = inner_problem(problem, batch_size, dtype=dtype)

    def init(theta, key):
        zeros = jnp.zeros(num_params, dtype)
        return init_params(key), zeros, zeros, key

    def step(theta, state, t):
        w, m, v, key = state
        value, g = jax.value_and_grad(loss)(w, key, t)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g**2
        m_hat, v_hat = m / (1 - 0.9 ** (t + 1.0)), v / (1 - 0.999 ** (t + 1.0))
        return (w - 10.0**theta * m_hat / (jnp.sqrt(v_hat) + 1e-8), m, v, key), value

    return System(init, step, horizon)


def adam_baseline(
    problem: str = "digits",
    horizon: int = 200,
    log10_learning_rates=np.linspace(-4, 0, 17),  # noqa: B008 (read, never written)
    seed: int = 0,
    num_eval_tasks: int = 16,
    dtype=jnp.float32,
) -> dict:
    """Adam with its learning rate tuned by grid search on the evaluation tasks: the grid's
    objectives, the best ``log10`` learning rate and the metrics there (same held-out inner
    tasks as ``learned_optimizer(...)[2]``)."""
    system = adam_system(problem, horizon, dtype=dtype)
    metrics = inner_problem(problem, dtype=dtype)[3]
    evaluate = episode_evaluator(
        system, jax.random.key(seed + 10_000), num_eval_tasks, final_metrics=lambda state: metrics(state[0])
    )
    grid = jnp.asarray(log10_learning_rates, dtype)
    results = jax.jit(jax.vmap(evaluate))(grid)
    objective = np.asarray(results["objective"])
    objective = np.where(np.isfinite(objective), objective, np.inf)
    best = int(np.argmin(objective))
    return {
        "log10_learning_rates": np.asarray(grid).tolist(),
        "objectives": objective.tolist(),
        "best_log10_learning_rate": float(grid[best]),
        "best": {k: float(v[best]) for k, v in results.items()},
    }


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "lopt-digits": ["pes", "tbptt-10", "es", "full-bptt"],
    "lopt-quadratic": ["pes", "tbptt-10", "es", "full-bptt"],
}


def _lopt_setup(problem: str, horizon: int) -> TaskSetup:
    system, theta, evaluate = learned_optimizer(problem, horizon=horizon)
    adam = adam_baseline(problem, horizon=horizon)
    best = adam["best"]["objective"]
    return TaskSetup(
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean inner training loss over the run on 16 held-out inner tasks",
            "horizon": horizon,
            "sgd_objective": float(evaluate(theta)["objective"]),
            "adam_tuned_objective": best,
            "adam_best_log10_learning_rate": adam["best_log10_learning_rate"],
            "adam_tuned": adam["best"],
        },
        settings=standard_settings(workers=4, particles=16, sigma=0.01, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS[f"lopt-{problem}"],
        **adam_cosine(3e-3),
        default_steps=300,
        default_seeds=2,
        reached=lambda theta, metrics: float(metrics["objective"]) <= best,
    )


def lopt_digits_setup(horizon: int = 200) -> TaskSetup:
    """Meta-train a per-parameter MLP optimizer on MLP training on digits (vs tuned Adam)."""
    return _lopt_setup("digits", horizon)


def lopt_quadratic_setup(horizon: int = 100) -> TaskSetup:
    """Meta-train a per-parameter MLP optimizer on random 20-d quadratics (vs tuned Adam)."""
    return _lopt_setup("quadratic", horizon)
