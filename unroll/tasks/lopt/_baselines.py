"""Hand-designed optimizers (Adam, Adam with a cosine schedule, SGD with momentum) as
``Architecture`` objects whose theta is their hyperparameters, tuned by grid on the same
held-out tasks a learned optimizer is scored on; and the ``lopt-*`` tasks of the command
line, which meta-train a learned optimizer against tuned Adam."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unroll._errors import BadValue
from unroll._system import System, check_positive_int
from unroll.task import Task, adam_cosine, standard_settings
from unroll.tasks import inner
from unroll.tasks.lopt._architectures import Architecture
from unroll.tasks.lopt._meta import inner_problem, learned_optimizer

BASELINES = ("adam", "adam-cosine", "sgd-momentum")
"""The hand-designed optimizers ``baseline_optimizer`` knows by name."""


def baseline_optimizer(name: str, horizon: int | None = None) -> Architecture:
    r"""A hand-designed optimizer as an ``Architecture`` whose theta is its
    hyperparameters, so it runs in the same system as a learned one and is tuned by a grid
    over theta (``tune_baseline``).

    Args:
      name: one of ``BASELINES``:

        * ``"adam"``: ``optax.scale_by_adam()`` ($\beta_1 = 0.9$, $\beta_2 = 0.999$,
          $\epsilon = 10^{-8}$) times $-10^{\mathrm{log10\_learning\_rate}}$;
        * ``"adam-cosine"``: the same with the learning rate cosine-decayed to zero over
          ``horizon`` steps, $\mathrm{lr}_t = \mathrm{lr}\, (1 + \cos(\pi t / \mathrm{horizon})) / 2$;
        * ``"sgd-momentum"``: heavy ball, $v \leftarrow \mathrm{momentum}\, v + g$,
          $w \leftarrow w - \mathrm{lr}\, v$.
      horizon: the cosine schedule's length (``"adam-cosine"`` only; required there).

    Returns:
      the ``Architecture``; its theta is ``{"log10_learning_rate": ()}`` (plus
      ``"momentum"`` for SGD).
    """
    if name not in BASELINES:
        raise BadValue(f"`name`={name!r} is not a baseline optimizer; choose one of {', '.join(BASELINES)}.")
    if name == "adam-cosine":
        horizon = check_positive_int(horizon, "horizon", "the cosine schedule decays over it, e.g. horizon=1000")
    if name == "sgd-momentum":

        def update(theta, grad, velocity, params, t, layout):
            velocity = theta["momentum"] * velocity + grad
            return -(10.0 ** theta["log10_learning_rate"]) * velocity, velocity

        return Architecture(
            name,
            {},
            lambda seed=0, dtype=jnp.float32: {
                "log10_learning_rate": jnp.asarray(-1.0, dtype),
                "momentum": jnp.asarray(0.9, dtype),
            },
            lambda num_params, dtype=jnp.float32: jnp.zeros(num_params, dtype),
            update,
        )
    adam = optax.scale_by_adam()

    def update(theta, grad, state, params, t, layout):
        direction, state = adam.update(grad, state)
        lr = 10.0 ** theta["log10_learning_rate"]
        if name == "adam-cosine":
            lr = lr * 0.5 * (1 + jnp.cos(np.pi * jnp.minimum(t, horizon) / horizon))
        return (-lr * direction).astype(grad.dtype), state

    return Architecture(
        name,
        {} if horizon is None else {"horizon": horizon},
        lambda seed=0, dtype=jnp.float32: {"log10_learning_rate": jnp.asarray(-2.0, dtype)},
        lambda num_params, dtype=jnp.float32: adam.init(jnp.zeros(num_params, dtype)),
        update,
    )


def tune_baseline(
    name: str,
    problem: str | inner.InnerTask = "digits",
    horizon: int = 200,
    log10_learning_rates=np.linspace(-4, 0, 17),  # noqa: B008 (read, never written)
    momenta=(0.5, 0.9, 0.99),
    seed: int = 0,
    num_eval_tasks: int = 16,
    measure: str = "final_train_loss",
    dtype=jnp.float32,
) -> dict:
    r"""A ``baseline_optimizer`` tuned by grid search on the evaluation tasks of
    ``learned_optimizer(problem, horizon, seed=seed, num_eval_tasks=...)`` (the same
    held-out tasks a learned optimizer is scored on). Diverged points score the ceiling,
    never NaN.

    Args:
      name: one of ``BASELINES``.
      problem: one of ``PROBLEMS`` or an ``InnerTask``.
      horizon: the inner run's length (and the cosine schedule's).
      log10_learning_rates: the grid's $\log_{10}$ learning rates.
      momenta: the momenta each learning rate is paired with (``"sgd-momentum"`` only).
      seed: picks the evaluation tasks (as for ``learned_optimizer``).
      num_eval_tasks: how many evaluation tasks.
      measure: the metric of ``learned_optimizer``'s ``evaluate`` to minimize.
      dtype: the inner problem's dtype.

    Returns:
      a dict: ``name``, ``horizon``, ``grid`` (theta's values at each point), ``measure``,
      ``scores`` (the measure at each point), ``best_theta`` (the best point) and ``best``
      (every metric there).
    """
    arch = baseline_optimizer(name, horizon)
    _, _, evaluate = learned_optimizer(
        problem, horizon, seed=seed, num_eval_tasks=num_eval_tasks, dtype=dtype, architecture=arch
    )
    lrs = np.asarray(log10_learning_rates, np.float64)
    if name == "sgd-momentum":
        grid = {
            "log10_learning_rate": np.repeat(lrs, len(momenta)),
            "momentum": np.tile(np.asarray(momenta, np.float64), len(lrs)),
        }
    else:
        grid = {"log10_learning_rate": lrs}
    results = jax.jit(jax.vmap(evaluate))({k: jnp.asarray(v, dtype) for k, v in grid.items()})
    scores = np.asarray(results[measure], np.float64)
    best = int(np.argmin(np.where(np.isfinite(scores), scores, np.inf)))
    return {
        "name": name,
        "horizon": horizon,
        "grid": {k: v.tolist() for k, v in grid.items()},
        "measure": measure,
        "scores": scores.tolist(),
        "best_theta": {k: float(v[best]) for k, v in grid.items()},
        "best": {k: float(v[best]) for k, v in results.items()},
    }


def adam_system(problem: str = "digits", horizon: int = 200, batch_size: int = 64, dtype=jnp.float32) -> System:
    r"""The same inner training run with Adam ($\beta_1 = 0.9$, $\beta_2 = 0.999$), so the
    baseline can be tuned (``adam_baseline``).

    Args:
      problem: one of ``PROBLEMS``.
      horizon: the inner run's length.
      batch_size: the digits MLP's minibatch size.
      dtype: the inner problem's dtype.

    Returns:
      a ``System`` whose theta is $\log_{10}$ of Adam's learning rate (a scalar).
    """
    task = inner_problem(problem, batch_size, dtype=dtype)
    system, _, _ = learned_optimizer(task, horizon, dtype=dtype, architecture=baseline_optimizer("adam"))
    return System(system.init, lambda theta, state, t: system.step({"log10_learning_rate": theta}, state, t), horizon)


def adam_baseline(
    problem: str = "digits",
    horizon: int = 200,
    log10_learning_rates=np.linspace(-4, 0, 17),  # noqa: B008 (read, never written)
    seed: int = 0,
    num_eval_tasks: int = 16,
    dtype=jnp.float32,
) -> dict:
    r"""Adam with its learning rate tuned by grid search on the evaluation tasks for the mean
    inner training loss (``tune_baseline("adam", measure="objective")``).

    Args:
      problem: one of ``PROBLEMS`` or an ``InnerTask``.
      horizon: the inner run's length.
      log10_learning_rates: the grid's $\log_{10}$ learning rates.
      seed: picks the evaluation tasks (as for ``learned_optimizer``).
      num_eval_tasks: how many evaluation tasks.
      dtype: the inner problem's dtype.

    Returns:
      a dict: ``log10_learning_rates`` (the grid), ``objectives`` (each point's),
      ``best_log10_learning_rate`` and ``best`` (every metric there).
    """
    result = tune_baseline(
        "adam",
        problem,
        horizon,
        log10_learning_rates,
        seed=seed,
        num_eval_tasks=num_eval_tasks,
        measure="objective",
        dtype=dtype,
    )
    return {
        "log10_learning_rates": result["grid"]["log10_learning_rate"],
        "objectives": result["scores"],
        "best_log10_learning_rate": result["best_theta"]["log10_learning_rate"],
        "best": result["best"],
    }


DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "lopt-digits": ["pes", "tbptt-10", "es", "full-bptt"],
    "lopt-quadratic": ["pes", "tbptt-10", "es", "full-bptt"],
}
"""The estimators ``unroll compare TASK`` runs on the ``lopt-*`` tasks when none are named."""


def _lopt_setup(problem: str, horizon: int) -> Task:
    system, theta, evaluate = learned_optimizer(problem, horizon=horizon)
    adam = adam_baseline(problem, horizon=horizon)
    best = adam["best"]["objective"]
    return Task(
        name=f"lopt-{problem}",
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
        **adam_cosine(3e-3, clip=1.0),
        default_steps=300,
        default_seeds=2,
        reached=lambda theta, metrics: float(metrics["objective"]) <= best,
    )


def lopt_digits_setup(horizon: int = 200) -> Task:
    """Meta-train a per-parameter MLP optimizer on MLP training on digits (vs tuned Adam).

    Args:
      horizon: the inner run's length.

    Returns:
      the ``lopt-digits`` ``Task``: ``learned_optimizer("digits", horizon)``'s system and
      theta, reached once its objective is at most tuned Adam's (``adam_baseline``).
    """
    return _lopt_setup("digits", horizon)


def lopt_quadratic_setup(horizon: int = 100) -> Task:
    """Meta-train a per-parameter MLP optimizer on random 20-d quadratics (vs tuned Adam).

    Args:
      horizon: the inner run's length.

    Returns:
      the ``lopt-quadratic`` ``Task``.
    """
    return _lopt_setup("quadratic", horizon)
