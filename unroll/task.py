"""A task: a system plus where to start, how to score and how to train it (``unroll.Task``).

``unroll.compare`` runs estimators on a task; every built-in task (``unroll list``)
returns one, and a user builds one from their own system:

```python
task = unroll.Task(system, theta)
folder, summary = unroll.compare(task, estimators=["full-bptt", "tbptt-10", "pes"], steps=300, seeds=2)
```
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from unroll._errors import BadType, BadValue
from unroll._system import check_against_theta, check_memory_budget, check_positive_int, check_system
from unroll._tree import PyTree

__all__ = [
    "DEFAULT_MEMORY_LIMIT",
    "EVALUATION_EPISODES",
    "EVALUATION_SEED",
    "STANDARD_ESTIMATORS",
    "adam_cosine",
    "check_learning_rate",
    "check_memory_limit",
    "default_evaluation",
    "estimator_memory",
    "memory_models",
    "scaled_truncation",
    "standard_estimators",
    "standard_settings",
    "Task",
    "trajectory_sizes",
]


# the episodes the default evaluation averages over: keys split(key(EVALUATION_SEED), EVALUATION_EPISODES)
EVALUATION_EPISODES = 64
EVALUATION_SEED = 20_231_207

# a task's default estimators, in this order (tbptt at the task's truncation); each is left out when the
# memory it needs on the system (``estimator_memory``) exceeds the task's ``memory_limit``
STANDARD_ESTIMATORS = ("full-bptt", "checkpointed-bptt", "tbptt", "rtrl", "uoro", "pes", "nres")
DEFAULT_MEMORY_LIMIT = "1GiB"


def standard_settings(
    workers: int = 10,
    particles: int = 100,
    sigma: float = 0.1,
    truncation: int = 10,
    directions: int = 10,
    memory_budget: int = 10,
) -> dict:
    r"""The shared settings every registered estimator of a task is built with.

    ``unroll.registry.build`` passes each to the estimators whose constructor takes it: every
    estimator gets the same ``num_workers``, and every ES estimator the same particles per
    worker, so their rows are comparable.

    Args:
      workers: ``num_workers``, staggered trajectories per estimator.
      particles: ``num_particles`` per worker of the ES family (antithetic pairs included).
      sigma: the ES family's perturbation scale $\sigma$.
      truncation: the window length $K$ of windowed estimators (``tbptt-K`` overrides it).
      directions: ``num_directions`` of ``forward``.
      memory_budget: the stored states of ``checkpointed-bptt``.

    Returns:
      A dict keyed by the constructors' argument names.
    """
    return {
        "num_workers": workers,
        "num_particles": particles,
        "sigma": sigma,
        "truncation": truncation,
        "num_directions": directions,
        "memory_budget": memory_budget,
    }


def adam_cosine(learning_rate: float, clip: float | None = None) -> dict:
    r"""Adam with a cosine-decayed learning rate, as `Task` fields (`optimizer`, `optimizer_description`).

    At outer step $i$ of a run of $N$ outer steps the learning rate is

    $$
    \eta_i = \eta \left(0.01 + 0.99 \cdot \tfrac12 \left(1 + \cos(\pi i / N)\right)\right).
    $$

    Args:
      learning_rate: the initial learning rate $\eta$; it decays to $\eta / 100$.
      clip: when given, the meta-gradient's global norm is clipped to it first.

    Returns:
      A dict of two `Task` fields: `optimizer`, a function `num_outer_steps -> optax.GradientTransformation`
      (the schedule spans the run's outer steps), and `optimizer_description`, the summary's words for it.
    """

    def optimizer(steps):
        adam = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))
        return adam if clip is None else optax.chain(optax.clip_by_global_norm(clip), adam)

    clipped = "" if clip is None else f" after clipping the gradient to global norm {clip:g}"
    return {
        "optimizer": optimizer,
        "optimizer_description": f"adam, learning rate {learning_rate:g} cosine-decayed to "
        f"{learning_rate / 100:g} over the outer steps{clipped}",
    }


def scaled_truncation(horizon: int, truncation: int = 10) -> int:
    r"""The default truncation on a short horizon: `truncation`, or half the horizon if that is too long.

    Args:
      horizon: the episode length $T$ (`system.horizon`).
      truncation: the truncation wanted, $K$.

    Returns:
      $K$ where an episode holds at least two such windows ($2K \le T$), else `horizon // 2` (at least 1).
    """
    return truncation if 2 * truncation <= horizon else max(1, horizon // 2)


@dataclasses.dataclass(frozen=True)
class Task:
    r"""A system with its starting `theta` and how to score and train it: what `unroll.compare` needs.

    Only `system` and `theta` are required; every other field is keyword-only and has a
    default, resolved when the task is made (each argument is also the field of that name).

    Args:
      system: an ``unroll.System`` (anything with ``init``, ``step`` and ``horizon``).
      theta: the initial outer parameters, a pytree of float arrays.
      name: what the comparison is called (folder, header, summary). Default: the name of the
        module that defines ``system.step`` (a file's stem, e.g. ``pendulum`` for
        ``pendulum.py``; a script's own file name when it is ``__main__``), else ``"task"``.
      evaluate: `theta -> {"objective": ..., other scalar metrics}`, jit-able. Default: the mean
        episode loss $\frac1{64} \sum_{i<64} \frac1T \sum_{t<T} \ell_t(\theta; k_i)$ over 64 fixed episodes,
        keys $k_i$ = `split(key(EVALUATION_SEED), 64)`, as `objective` (`default_evaluation`).
      optimizer: an optax ``GradientTransformation``, or a function ``num_outer_steps -> GradientTransformation``
        (for schedules over the run). Default: Adam with its learning rate cosine-decayed from
        ``learning_rate`` to 1% of it over each run's outer steps (``adam_cosine``).
      learning_rate: the default optimizer's initial learning rate (ignored when ``optimizer`` is given).
      optimizer_description: how the summary describes the optimizer. Default: derived from the above.
      settings: the estimators' shared settings (``standard_settings()``'s keys; ``unroll.registry.build``).
        Default: ``standard_settings()`` (10 workers, 100 particles, $\sigma = 0.1$), with the truncation
        ``scaled_truncation(horizon)``: 10, or half the horizon where an episode is shorter than two windows.
        A dict given here is merged over those defaults.
      default_estimators: the estimators ``compare`` runs when none are named. Default: those of
        ``STANDARD_ESTIMATORS`` whose memory on this system (``estimator_memory``) fits ``memory_limit``;
        ``left_out`` says which were not, and why.
      memory_limit: the most memory one default estimator may hold (bytes, or a size such as ``"1GiB"``).
      reference: known answers (e.g. the optimum) and what the objective means, written to the summary and
        the report.
      reached: ``(final theta of one seed, its final metrics) -> bool``: whether it reached the known answer.
      default_steps: outer steps when ``compare`` is given none.
      default_seeds: seeds when ``compare`` is given none.
      estimators: the task's own builds, ``name -> build(system, truncation) -> Estimator``, used instead of
        the registry's for those names (a build with a ``settings`` attribute has them recorded in the summary).
      left_out: filled in when ``default_estimators`` is derived: ``{name: why}`` for each standard estimator
        over ``memory_limit``.
    """

    system: Any
    theta: PyTree
    _: dataclasses.KW_ONLY
    name: str | None = None
    evaluate: Callable[[PyTree], dict] | None = None
    optimizer: optax.GradientTransformation | Callable[[int], optax.GradientTransformation] | None = None
    learning_rate: float = 1e-2
    optimizer_description: str | None = None
    settings: dict | None = None
    default_estimators: list[str] | None = None
    memory_limit: int | str = DEFAULT_MEMORY_LIMIT
    reference: dict = dataclasses.field(default_factory=dict)
    reached: Callable[[PyTree, dict], bool] | None = None
    default_steps: int = 300
    default_seeds: int = 2
    estimators: dict = dataclasses.field(default_factory=dict)
    left_out: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        check_system(self.system, "Task.system")
        check_against_theta(self.system, self.theta, jax.random.key(0))  # traces init and step: no FLOPs
        for field in ("default_steps", "default_seeds"):
            check_positive_int(getattr(self, field), f"Task.{field}")
        set_ = lambda field, value: object.__setattr__(self, field, value)
        if self.name is None:
            set_("name", _default_name(self.system))
        if not isinstance(self.name, str) or not self.name:
            raise BadType(f"`Task.name` must be a non-empty str, got {self.name!r}; e.g. name='pendulum'.")
        if self.evaluate is None:
            set_("evaluate", default_evaluation(self.system))
            if "objective" not in self.reference:
                objective = f"mean episode loss over {EVALUATION_EPISODES} fixed episodes"
                set_("reference", {"objective": objective, **self.reference})
        elif not callable(self.evaluate):
            raise BadType(
                f"`Task.evaluate` must be a function theta -> {{'objective': ..., ...}}, got "
                f"{type(self.evaluate).__name__}; or leave it out for the mean episode loss over 64 episodes."
            )
        self._resolve_optimizer(set_)
        if self.settings is not None and not isinstance(self.settings, dict):
            raise BadType(f"`Task.settings` must be a dict (see standard_settings()), got {type(self.settings)}.")
        default = standard_settings(truncation=scaled_truncation(self.system.horizon))
        set_("settings", {**default, **(self.settings or {})})
        memory_limit = check_memory_limit(self.memory_limit)
        if self.default_estimators is None:
            names, left_out = standard_estimators(self.system, self.theta, self.settings, memory_limit)
            set_("default_estimators", names)
            set_("left_out", left_out)
        if "horizon" not in self.reference:
            set_("reference", {**self.reference, "horizon": self.system.horizon})

    def _resolve_optimizer(self, set_) -> None:
        if self.optimizer is None:
            check_learning_rate(self.learning_rate)
            fields = adam_cosine(self.learning_rate)
            set_("optimizer", fields["optimizer"])
            if self.optimizer_description is None:
                set_("optimizer_description", fields["optimizer_description"])
        elif isinstance(self.optimizer, optax.GradientTransformation):
            fixed = self.optimizer
            set_("optimizer", lambda steps: fixed)
            if self.optimizer_description is None:
                set_("optimizer_description", "the task's optax optimizer")
        elif callable(self.optimizer):
            if self.optimizer_description is None:
                set_("optimizer_description", f"{getattr(self.optimizer, '__name__', 'the task')}(outer steps)")
        else:
            raise BadType(
                f"`Task.optimizer` must be an optax GradientTransformation or a function num_steps -> one, got "
                f"{type(self.optimizer).__name__}; e.g. optimizer=optax.adam(1e-3)."
            )


def check_learning_rate(learning_rate: Any) -> float:
    """`Task.learning_rate`, checked: a positive finite number.

    Args:
      learning_rate: the value to check (a `bool` is refused).

    Returns:
      It as a `float`.

    Raises:
      BadValue: it is not a positive finite int or float.
    """
    if (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not 0 < learning_rate < math.inf
    ):
        raise BadValue(f"`Task.learning_rate`={learning_rate!r} must be a positive number, e.g. 1e-2.")
    return float(learning_rate)


def check_memory_limit(memory_limit: Any, name: str = "Task.memory_limit", meaning: str = "") -> int:
    """`Task.memory_limit` (or the argument `name`) in bytes.

    Args:
      memory_limit: a positive int of bytes, or a size such as `"1GiB"` or `"512MiB"`.
      name: what the error message calls the value.
      meaning: words appended to the error message to explain what `name` means.

    Returns:
      The limit in bytes, an int.

    Raises:
      BadValue: `memory_limit` is neither a positive int nor a size string.
    """
    if isinstance(memory_limit, int) and not isinstance(memory_limit, bool) and memory_limit > 0:
        return memory_limit
    if isinstance(memory_limit, str):
        try:
            return check_memory_budget(memory_limit).size
        except ValueError:
            pass
    raise BadValue(
        f"`{name}`={memory_limit!r} must be a size in bytes such as '1GiB' or '512MiB' (or a positive "
        f"int of bytes){meaning}."
    )


def _default_name(system) -> str:
    module = getattr(system.step, "__module__", None) or ""
    if module == "__main__":
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        return main.rsplit("/", 1)[-1].removesuffix(".py") if main else "task"
    return module.rsplit(".", 1)[-1] or "task"


def default_evaluation(system, num_episodes: int = EVALUATION_EPISODES) -> Callable[[PyTree], dict]:
    r"""`Task`'s default `evaluate`: the mean episode loss over fixed episodes, jit-able.

    The objective is

    $$
    \frac1N \sum_{i<N} \frac1T \sum_{t<T} \ell_t(\theta; k_i).
    $$

    Args:
      system: the system.
      num_episodes: $N$; the keys $k_i$ are `split(key(EVALUATION_SEED), N)`.

    Returns:
      The function `theta -> {"objective": mean episode loss}`.
    """
    from unroll.tasks.evaluation import episode_evaluator  # (unroll.tasks imports this module)

    return episode_evaluator(system, jax.random.key(EVALUATION_SEED), num_episodes)


def trajectory_sizes(system, theta) -> tuple[int, int, int, int]:
    """The sizes of one trajectory, found by tracing `init` (nothing runs).

    Args:
      system: the system.
      theta: the outer parameters.

    Returns:
      `(state bytes, state floats, theta bytes, theta floats)`.
    """
    from unroll._system import inexact_leaves
    from unroll.checkpointing import state_bytes

    state = jax.eval_shape(system.init, theta, jax.random.key(0))
    floats = sum(math.prod(leaf.shape) for leaf in inexact_leaves(state))
    theta_leaves = jax.tree_util.tree_leaves(theta)
    theta_floats = sum(int(np.size(leaf)) for leaf in theta_leaves)
    theta_bytes = sum(int(getattr(leaf, "nbytes", None) or np.asarray(leaf).nbytes) for leaf in theta_leaves)
    return state_bytes(state), floats, theta_bytes, theta_floats


def estimator_memory(name: str, system, theta, settings: dict) -> int:
    r"""The bytes an estimate of `name` holds at once on `system` (its dominant term).

    With $W$ workers, $P$ particles, window $K$, horizon $T$, $D$ directions, $s$ the state's bytes
    ($n_s$ floats of $b$ bytes) and $p$ theta's bytes ($n_\theta$ floats):

    * ``full-bptt``, ``parallel-bptt``, ``quasi-deer``: the whole trajectory, $W T s$ (``deer``: $W T n_s^2 b$,
      its Jacobians; ``quasi-elk``: $5 W T s$ and ``elk``: $3 W T n_s^2 b$, the Kalman filter's elements);
    * ``checkpointed-bptt``: $W m s$ for ``memory_budget`` $m$ states (or the bytes it gives);
    * ``tbptt``, ``dni``: the window, $W K s$;
    * ``rtrl``, ``snap``: the influence matrix $d s / d\theta$, $W n_s n_\theta b$ (``snap``'s dense bound);
    * ``uoro``: $W (s + p)$; ``forward``: $W D (s + p)$;
    * the ES family (``es``, ``tes``, ``pes``, ``nres``, ``gpes``): $W P (s + p)$.

    Args:
      name: a registry name (``unroll.registry.ESTIMATORS``).
      system: the system.
      theta: the outer parameters.
      settings: the shared settings (``standard_settings()``'s keys).

    Returns:
      The bytes, an estimate that ignores the constant overheads every estimator shares.
    """
    models = memory_models(system, theta, settings)
    if name not in models:
        raise BadValue(f"no memory model for estimator {name!r}; choose from {', '.join(models)}.")
    return models[name]


def memory_models(system, theta, settings: dict) -> dict[str, int]:
    """`estimator_memory` of every estimator it models, from one trace of `init`.

    Args:
      system: the system.
      theta: the outer parameters.
      settings: the shared settings (`standard_settings()`'s keys; missing ones take its values).

    Returns:
      `{registry name: bytes}`.
    """
    s, n_s, p, n_theta = trajectory_sizes(system, theta)
    b = s // n_s if n_s else 4
    get = lambda key: settings.get(key, standard_settings()[key])
    budget = get("memory_budget")
    checkpoints = check_memory_budget(budget).size if isinstance(budget, str) else budget * s
    trajectory = system.horizon * s
    es = get("num_particles") * (s + p)
    per_worker = {
        "full-bptt": trajectory,
        "parallel-bptt": trajectory,
        "quasi-deer": trajectory,
        "deer": system.horizon * n_s * n_s * b,
        "quasi-elk": 5 * trajectory,
        "elk": 3 * system.horizon * n_s * n_s * b,
        "checkpointed-bptt": checkpoints,
        "tbptt": get("truncation") * s,
        "dni": get("truncation") * s,
        "rtrl": n_s * n_theta * b,
        "snap": n_s * n_theta * b,
        "uoro": s + p,
        "forward": get("num_directions") * (s + p),
        **dict.fromkeys(("es", "tes", "pes", "nres", "gpes"), es),
    }
    return {name: get("num_workers") * size for name, size in per_worker.items()}


def standard_estimators(system, theta, settings: dict, memory_limit: int) -> tuple[list[str], dict]:
    """The names of `STANDARD_ESTIMATORS` whose `estimator_memory` fits `memory_limit` bytes.

    `checkpointed-bptt` stands in for `full-bptt` only when `full-bptt` is left out (they
    compute the same gradient).

    Args:
      system: the system.
      theta: the outer parameters.
      settings: the shared settings (`standard_settings()`'s keys).
      memory_limit: bytes.

    Returns:
      `(names, left_out)`: the estimators that fit, in `STANDARD_ESTIMATORS` order (`tbptt` as
      `tbptt-K` at the settings' truncation $K$), and `{name: why}` for those left out.
    """
    from unroll.checkpointing import format_bytes

    models = memory_models(system, theta, settings)  # one trace of init for all of them
    names, left_out = [], {}
    for name in STANDARD_ESTIMATORS:
        if name == "checkpointed-bptt" and "full-bptt" in names:
            continue
        need = models[name]
        if need > memory_limit:
            left_out[name] = (
                f"needs about {format_bytes(need)} on this system (estimator_memory), over the memory limit "
                f"of {format_bytes(memory_limit)}"
            )
        else:
            names.append(name if name != "tbptt" else f"tbptt-{settings['truncation']}")
    return names, left_out
