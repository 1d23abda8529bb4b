"""Lorenz-63 parameter estimation from an observed trajectory, a chaotic system on
which long-horizon BPTT gradients explode (Metz et al. 2021).

``dx = sigma (y - x)``, ``dy = x (rho - z) - y``, ``dz = x y - beta z``, integrated by
RK4 with step ``dt``. The observation is one long trajectory of the true parameters
(10, 28, 8/3); an episode starts from the observed state at a random offset and the
step loss is the mean squared distance of the simulated state to the observed one.
theta is ``[sigma, rho, beta]``; at the true parameters every step loss is zero.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import System, check_positive_int
from unroll.task import Task, adam_cosine, standard_settings
from unroll.tasks.evaluation import episode_evaluator

TRUE_PARAMS = (10.0, 28.0, 8.0 / 3.0)


def lorenz_derivative(params, x, xp=jnp):
    sigma, rho, beta = params[0], params[1], params[2]
    return xp.stack([sigma * (x[1] - x[0]), x[0] * (rho - x[2]) - x[1], x[0] * x[1] - beta * x[2]])


def rk4_step(params, x, dt, xp=jnp):
    """One classical Runge-Kutta step of the Lorenz-63 flow."""
    k1 = lorenz_derivative(params, x, xp)
    k2 = lorenz_derivative(params, x + 0.5 * dt * k1, xp)
    k3 = lorenz_derivative(params, x + 0.5 * dt * k2, xp)
    k4 = lorenz_derivative(params, x + dt * k3, xp)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def lorenz_trajectory(num_steps: int, dt: float = 0.01, params=TRUE_PARAMS, x0=(1.0, 1.0, 1.0), burn_in: int = 1000):
    """``[num_steps + 1, 3]`` float64 states of the flow (numpy), after ``burn_in`` steps
    that bring ``x0`` onto the attractor."""
    x = np.asarray(x0, np.float64)
    params = np.asarray(params, np.float64)
    for _ in range(burn_in):
        x = rk4_step(params, x, dt, np)
    out = [x]
    for _ in range(num_steps):
        x = rk4_step(params, x, dt, np)
        out.append(x)
    return np.stack(out)


def lorenz(
    horizon: int = 200,
    dt: float = 0.01,
    num_observed: int = 5000,
    initial_params=(8.0, 25.0, 2.0),
    dtype=jnp.float32,
    num_eval_episodes: int = 32,
    seed: int = 0,
):
    """Returns ``(system, theta, evaluate)``: ``theta = initial_params`` as an array,
    ``evaluate(theta)`` the mean episode loss over fixed offsets (``"objective"``) and the
    distance ``|theta - true|`` (``"param_error"``)."""
    horizon = check_positive_int(horizon, "horizon")
    num_observed = check_positive_int(num_observed, "num_observed")
    if num_observed <= horizon:
        raise BadValue(
            f"`num_observed`={num_observed} must exceed `horizon`={horizon}: episodes start at random offsets "
            f"into the observed trajectory; pass num_observed > {horizon} (e.g. {25 * horizon}) or a shorter horizon."
        )
    observed = lorenz_trajectory(num_observed, dt)

    def init(theta, key):
        offset = jax.random.randint(key, (), 0, num_observed - horizon)
        return jnp.asarray(observed, jnp.result_type(theta))[offset], offset

    def step(theta, state, t):
        x, offset = state
        x = rk4_step(theta, x, dt)
        target = jnp.asarray(observed, x.dtype)[offset + t + 1]
        return (x, offset), jnp.mean((x - target) ** 2)

    system = System(init, step, horizon)
    true = jnp.asarray(TRUE_PARAMS, dtype)
    evaluate = episode_evaluator(
        system,
        jax.random.key(seed + 10_000),
        num_eval_episodes,
        extra=lambda theta: {"param_error": jnp.linalg.norm(theta - true.astype(theta.dtype))},
    )
    return system, jnp.asarray(initial_params, dtype), evaluate


# the estimators `unroll compare TASK` runs when none are named
DEFAULT_ESTIMATORS: dict[str, list[str]] = {
    "lorenz": ["full-bptt", "tbptt-10", "pes", "es"],
}


def lorenz_setup(horizon: int = 200) -> Task:
    """Lorenz-63 parameter estimation (sigma, rho, beta) from an observed trajectory (chaotic)."""
    system, theta, evaluate = lorenz(horizon=horizon)
    return Task(
        name="lorenz",
        system=system,
        theta=theta,
        evaluate=evaluate,
        reference={
            "objective": "mean squared state error over 32 fixed episodes",
            "theta_true": list(TRUE_PARAMS),
            "horizon": horizon,
        },
        settings=standard_settings(workers=4, particles=50, sigma=0.3, truncation=10),
        default_estimators=DEFAULT_ESTIMATORS["lorenz"],
        **adam_cosine(0.1),
        default_steps=300,
        default_seeds=2,
        reached=lambda theta, metrics: float(metrics["param_error"]) < 0.5,
    )
