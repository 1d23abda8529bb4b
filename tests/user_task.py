"""The source of a user's task module that no built-in task resembles (Lotka-Volterra rates
fitted to an observed predator-prey trajectory), which the tests write into a temporary
folder and run through ``unroll compare that_file.py:make`` and ``module:make``."""

SOURCE = '''
import jax
import jax.numpy as jnp

import unroll

DT, TRUE_RATES = 0.05, (1.0, 0.5)


def euler(a, b, x, y):
    return x + DT * (a * x - 0.4 * x * y), y + DT * (0.3 * x * y - b * y)


def init(theta, key):
    x0 = 1.0 + 0.1 * jax.random.uniform(key, dtype=theta["log_a"].dtype)
    return {"model": (x0, x0), "data": (x0, x0)}


def step(theta, state, t):
    model = euler(jnp.exp(theta["log_a"]), jnp.exp(theta["log_b"]), *state["model"])
    data = euler(*TRUE_RATES, *state["data"])
    return {"model": model, "data": data}, (model[0] - data[0]) ** 2 + (model[1] - data[1]) ** 2


def make(horizon=30, learning_rate=0.05):
    """Lotka-Volterra rates from an observed trajectory."""
    system = unroll.System(init, step, horizon)
    objective = unroll.task.default_evaluation(system)

    def evaluate(theta):
        return {**objective(theta), "log_a": theta["log_a"], "log_b": theta["log_b"]}

    return unroll.Task(
        system,
        {"log_a": jnp.asarray(0.3), "log_b": jnp.asarray(-0.2)},
        evaluate=evaluate,
        learning_rate=learning_rate,
        settings={"num_workers": 2, "num_particles": 8, "sigma": 0.05},
        reference={"objective": "mean squared distance to the observed trajectory", "true_a": 1.0, "true_b": 0.5},
    )


ready = make(horizon=20)  # a Task itself, not a function
not_a_task = 42


def returns_a_number():
    return 3


def broken(horizon=30):
    raise ValueError("the user's own check failed")  # a ValueError in the user's code: its traceback


def shape_bug():
    def bad_step(theta, state, t):
        h = jnp.tanh(theta["w"] @ state)  # w is [3, 4], state [3]: the user's shape bug
        return h, jnp.sum(h**2)

    system = unroll.System(lambda theta, key: jnp.zeros(3), bad_step, 10)
    return unroll.Task(system, {"w": jnp.ones((3, 4))})
'''


def write(folder, name: str = "lotka") -> str:
    """Writes the module as ``folder/<name>.py`` and returns its path."""
    path = folder / f"{name}.py"
    path.write_text(SOURCE)
    return str(path)
