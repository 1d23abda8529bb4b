"""The README tour's damped oscillator as a task file for ``unroll compare``:

    unroll compare examples/oscillator.py:make --estimators full-bptt tbptt-10 pes --budget system-steps

fits the stiffness and damping of a damped oscillator to a reference one (true 4.0 and 0.3),
from a random start each episode. ``make``'s keyword arguments are task options
(``--task-option horizon=200``).
"""

import jax
import jax.numpy as jnp

import unroll

DT, TRUE_STIFFNESS, TRUE_DAMPING = 0.1, 4.0, 0.3


def init(theta, key):
    # our oscillator and the one we try to match, both released from the same random x
    x0 = 1.0 + 0.1 * jax.random.normal(key)
    return {"x": x0, "v": 0.0 * x0, "x_true": x0, "v_true": 0.0 * x0}


def step(theta, state, t):
    k, c = jnp.exp(theta["log_stiffness"]), jnp.exp(theta["log_damping"])
    v = state["v"] + DT * (-k * state["x"] - c * state["v"])
    v_true = state["v_true"] + DT * (-TRUE_STIFFNESS * state["x_true"] - TRUE_DAMPING * state["v_true"])
    new = {"x": state["x"] + DT * v, "v": v, "x_true": state["x_true"] + DT * v_true, "v_true": v_true}
    return new, (new["x"] - new["x_true"]) ** 2


def make(horizon: int = 100, learning_rate: float = 0.05) -> unroll.Task:
    """The oscillator task: theta = log stiffness and log damping, from (0.5, 0.0)."""
    return unroll.Task(
        unroll.System(init=init, step=step, horizon=horizon),
        {"log_stiffness": jnp.array(0.5), "log_damping": jnp.array(0.0)},
        learning_rate=learning_rate,
        settings={"num_workers": 8, "num_particles": 64, "sigma": 0.05},
        reference={
            "objective": "mean squared distance to the reference oscillator",
            "true_stiffness": TRUE_STIFFNESS,
            "true_damping": TRUE_DAMPING,
        },
    )
