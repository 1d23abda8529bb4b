"""Influence balancing (Tallec & Ollivier 2017; Vicol et al. 2021).

State ``s`` in R^n (n = 23) starts at ones; ``s_{t+1} = A s_t + theta b`` with
``A = 0.5 I + 0.5 U`` (``U`` the superdiagonal of ones) and ``b`` = ``+1`` on the
first 10 units, ``-1`` on the other 13; the step loss is ``0.5 (s_{t+1}[0] - 1)^2``.

Each unit passes half of itself to the unit above, so theta reaches ``s[0]``
through ever longer chains: positive at first, negative later. A short truncation
sees only the positive influence and pushes theta the wrong way. At steady state
``s[0] = 2 theta sum(b) = -6 theta``, so ``theta* = -1/6``; for a finite horizon
``T`` ``s_t[0] = a_t + theta c_t`` is affine in theta and the optimum of the mean
episode loss is ``sum_t c_t (1 - a_t) / sum_t c_t^2`` (``influence_optimum``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import System, check_positive_int
from unroll.task import Task, adam_cosine, standard_settings

THETA_INIT = 0.5


def _matrices(num_units: int, num_positive: int, dtype=np.float64):
    a = 0.5 * np.eye(num_units, dtype=dtype) + 0.5 * np.eye(num_units, k=1, dtype=dtype)
    b = np.concatenate([np.ones(num_positive, dtype), -np.ones(num_units - num_positive, dtype)])
    return a, b


def influence_balancing(horizon: int = 1000, num_units: int = 23, num_positive: int = 10) -> System:
    """The influence-balancing system; theta is a scalar (start it at ``THETA_INIT = 0.5``).

    The state's dtype follows theta's, so a float64 theta gives a float64 unroll.
    """
    horizon = check_positive_int(horizon, "horizon")
    num_units = check_positive_int(num_units, "num_units")
    if not 0 <= num_positive <= num_units:
        raise BadValue(
            f"`num_positive`={num_positive} must lie in [0, num_units={num_units}]; it counts the units with a "
            "positive self-weight, e.g. num_positive=10 of num_units=23."
        )
    a_np, b_np = _matrices(num_units, num_positive)

    def init(theta, key):
        del key  # deterministic
        return jnp.ones(num_units, jnp.result_type(theta))

    def step(theta, state, t):
        state = jnp.asarray(a_np, state.dtype) @ state + theta * jnp.asarray(b_np, state.dtype)
        return state, 0.5 * (state[0] - 1.0) ** 2

    return System(init, step, horizon)


def _affine_first_unit(horizon: int, num_units: int, num_positive: int):
    """``(a_t, c_t)`` for ``t = 1..T`` with ``s_t[0] = a_t + theta c_t`` (float64)."""
    a_mat, b = _matrices(num_units, num_positive)
    a, c = np.ones(num_units), np.zeros(num_units)
    offsets, slopes = [], []
    for _ in range(horizon):  # closed form in float64, numpy: a few thousand tiny matvecs
        a, c = a_mat @ a, a_mat @ c + b
        offsets.append(a[0])
        slopes.append(c[0])
    return np.array(offsets), np.array(slopes)


def influence_optimum(horizon: int = 1000, num_units: int = 23, num_positive: int = 10) -> float:
    """The exact minimizer of the mean episode loss for this horizon (closed form)."""
    a, c = _affine_first_unit(horizon, num_units, num_positive)
    return float(np.sum(c * (1 - a)) / np.sum(c * c))


def influence_loss(theta, horizon: int = 1000, num_units: int = 23, num_positive: int = 10):
    """The exact mean episode loss ``(1/T) sum_t 0.5 (a_t + theta c_t - 1)^2`` (numpy,
    vectorized over an array of thetas)."""
    return influence_loss_fn(horizon, num_units, num_positive, np)(np.asarray(theta, np.float64))


def influence_loss_fn(horizon: int = 1000, num_units: int = 23, num_positive: int = 10, xp=jnp):
    """``theta -> L(theta)``, the exact objective as the quadratic
    ``L = q0 + q1 theta + q2 theta^2`` (``xp`` = jnp, jit-able; or np)."""
    a, c = _affine_first_unit(horizon, num_units, num_positive)
    q0, q1, q2 = _coefficients(a, c)
    return lambda theta: q0 + q1 * xp.asarray(theta) + q2 * xp.asarray(theta) ** 2


def influence_gap_fn(horizon: int = 1000, num_units: int = 23, num_positive: int = 10, xp=jnp):
    """``theta -> L(theta) - L(theta*) = q2 (theta - theta*)^2``, exact without cancellation."""
    a, c = _affine_first_unit(horizon, num_units, num_positive)
    _, q1, q2 = _coefficients(a, c)
    optimum = -q1 / (2 * q2)
    return lambda theta: q2 * (xp.asarray(theta) - optimum) ** 2


def _coefficients(a, c):
    return tuple(float(np.mean(v)) for v in (0.5 * (a - 1) ** 2, c * (a - 1), 0.5 * c * c))


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "influence-balancing": ["tbptt-1", "tbptt-10", "tbptt-100", "tes", "pes", "nres", "forward", "rtrl", "full-bptt"],
}


def influence_balancing_setup(horizon: int = 1000) -> Task:
    """Influence balancing with the settings of the main job (Vicol et al. 2021, Sec. 5.1)."""
    system = influence_balancing(horizon)
    objective, gap = influence_loss_fn(horizon), influence_gap_fn(horizon)
    optimum = influence_optimum(horizon)
    tolerance = 0.02
    return Task(
        name="influence-balancing",
        system=system,
        theta=jnp.asarray(THETA_INIT, jnp.float32),
        evaluate=lambda theta: {"objective": objective(theta), "gap": gap(theta), "theta": theta},
        reference={
            "objective": "exact mean episode loss L(theta) (closed form); gap = L(theta) - L(theta*)",
            "theta_star": optimum,
            "objective_at_theta_star": float(objective(optimum)),
            "theta_star_steady_state": -1.0 / 6.0,
            "horizon": horizon,
            "tolerance": tolerance,
        },
        # 1000 particles in all (10 workers x 100), as Vicol et al.
        settings=standard_settings(workers=10, particles=100, sigma=0.1, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["influence-balancing"],
        **adam_cosine(1e-2),
        default_steps=500,
        default_seeds=3,
        reached=lambda theta, metrics: abs(float(theta) - optimum) < tolerance,
    )
