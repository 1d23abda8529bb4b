r"""The meta-training system: a learned optimizer (an ``Architecture``) training an inner
problem (``inner_problem``), one inner step per step of the ``System``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unroll._errors import BadValue
from unroll._system import System, check_positive_int
from unroll.tasks import inner
from unroll.tasks.evaluation import episode_evaluator
from unroll.tasks.lopt._architectures import Architecture, Layout, get_architecture, sizes_layout

PROBLEMS = ("digits", "quadratic", "digits-mlp-family", "digits-conv")
"""The inner problems ``inner_problem`` knows by name."""


def inner_problem(
    problem: str | inner.InnerTask, batch_size: int = 64, dim: int = 20, dtype=jnp.float32
) -> inner.InnerTask:
    """The inner task called ``problem``.

    Args:
      problem: one of ``PROBLEMS``: ``"digits"`` (a 64-32-10 tanh MLP, minibatches of
        ``batch_size``), ``"quadratic"`` (``dim``-d), ``"digits-mlp-family"`` (sampled
        MLPs) or ``"digits-conv"`` (a small convolutional network); an ``InnerTask`` is
        returned as it is.
      batch_size: the digits MLP's minibatch size.
      dim: the quadratic's dimension.
      dtype: the task's dtype.

    Returns:
      an ``unroll.tasks.inner.InnerTask``.
    """
    if isinstance(problem, inner.InnerTask):
        return problem
    if problem == "digits":
        return inner.digits_mlp_task((64, 32, 10), batch_size, dtype)
    if problem == "quadratic":
        return inner.quadratic_task(dim, dtype)
    if problem == "digits-mlp-family":
        return inner.digits_mlp_family(dtype)
    if problem == "digits-conv":
        return inner.digits_conv_task(dtype=dtype)
    raise BadValue(f"`problem`={problem!r} is not a known inner problem; choose one of {', '.join(PROBLEMS)}.")


def inner_layout(problem: str | inner.InnerTask, dim: int = 20) -> Layout:
    """The inner problem's tensors (e.g. the digits MLP's weight matrices and biases) in its
    flat order.

    Args:
      problem: as for ``inner_problem``.
      dim: the quadratic's dimension.

    Returns:
      a ``Layout`` with one group per tensor.
    """
    return sizes_layout(inner_problem(problem, dim=dim).sizes)


META_LOSSES = ("loss", "log")
"""The step losses ``learned_optimizer``'s ``meta_loss`` chooses from."""
LOG_FLOOR = 1e-4
r"""``meta_loss="log"`` scores $\log(\mathrm{loss} + \mathrm{LOG\_FLOOR})$."""


class InnerState(NamedTuple):
    """The state of a learned-optimizer system: the inner parameters, the optimizer's
    state, the inner run's key (its task, init and minibatches), ``diverged`` (1.0 once
    the run passed the loss ceiling: its parameters are frozen) and, with
    ``run_lengths``, the step inside the current inner run (``None`` without)."""

    params: jax.Array
    opt_state: object
    key: jax.Array
    diverged: jax.Array
    count: jax.Array | None = None


def _check_run_lengths(run_lengths, horizon: int):
    if run_lengths is None:
        return None
    try:
        low, high = (int(v) for v in run_lengths)
    except (TypeError, ValueError):
        low = high = None
    if low is None or not 1 <= low <= high:
        raise BadValue(
            f"`run_lengths`={run_lengths!r} must be a pair (shortest, longest) of inner-run lengths with "
            "1 <= shortest <= longest, e.g. run_lengths=(100, 2000); None runs one inner run per episode."
        )
    return low, high


def run_length(key, run_lengths: tuple[int, int]) -> jax.Array:
    r"""The length of the inner run ``key`` starts, log-uniform (as learned_optimization's
    truncation schedules draw them).

    Args:
      key: the inner run's key.
      run_lengths: ``(shortest, longest)``.

    Returns:
      $\lfloor e^u \rfloor$ (an int32 scalar), $u$ uniform in
      $[\log \mathrm{shortest}, \log(\mathrm{longest} + 1))$.
    """
    low, high = run_lengths
    u = jax.random.uniform(jax.random.fold_in(key, 2), (), jnp.float32, np.log(low), np.log(high + 1))
    return jnp.clip(jnp.floor(jnp.exp(u)).astype(jnp.int32), low, high)


def learned_optimizer(
    problem: str | inner.InnerTask = "digits",
    horizon: int = 200,
    learning_rate: float | None = None,
    hidden: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
    dtype=jnp.float32,
    num_eval_tasks: int = 16,
    architecture: str | Architecture = "mlp",
    run_lengths: tuple[int, int] | None = None,
    meta_loss: str = "loss",
):
    r"""Meta-training a learned optimizer on ``problem`` (``inner_problem``).

    theta starts at the architecture's baseline (``init_theta(seed)``: SGD for ``"mlp"``,
    Adam for ``"adam-mlp"``, SGD with momentum for ``"controller"``). The state is an
    ``InnerState``. Step $t$ of an inner run at parameters $w$ with gradient $g$:

    $$w \leftarrow w + \mathrm{mask} \cdot \mathrm{update}(\theta, g, \mathrm{state}, w, t),
    \quad \mathrm{loss}_t = L(w; \mathrm{batch}_t),$$

    scored through the task's loss normalizer: once $\mathrm{loss}_t$ is not finite or
    above the task's ``ceiling`` (or the update would make $w$ non-finite) the run has
    diverged, scores ``ceiling`` at every later step, and its parameters and optimizer
    state stop moving. So every step loss lies in $[0, \mathrm{ceiling}]$: never NaN, and
    one diverging inner run costs a bounded amount, not a whole ES population (its
    meta-gradient through the frozen steps is zero).

    Args:
      problem: one of ``PROBLEMS`` or an ``InnerTask`` (``inner_problem``).
      horizon: the episode's length in steps.
      learning_rate: the architecture's ``learning_rate``; ``None``: its default.
      hidden: the architecture's ``hidden`` width; ``None``: its default.
      batch_size: the digits MLP's minibatch size.
      seed: draws theta's hidden weights; the evaluation tasks' keys are
        ``split(key(seed + 10_000))``.
      dtype: the inner problem's and theta's dtype.
      num_eval_tasks: how many held-out tasks ``evaluate`` averages over.
      architecture: one of ``ARCHITECTURES`` (built with ``learning_rate`` and ``hidden``
        when given) or any ``Architecture`` (``baseline_optimizer`` ones too).
      run_lengths: ``(shortest, longest)``: instead of one inner run per episode, the
        episode (``horizon`` steps) is a sequence of inner runs whose lengths are
        log-uniform in that range (``run_length``): when one ends, a fresh task, init and
        optimizer state start inside the same episode (the System interface has one fixed
        ``horizon``, so a length schedule lives in the task). The optimizer's step count is
        the inner run's. ``None``: one inner run per episode.
      meta_loss: ``"loss"``, the normalized step loss, or ``"log"``:
        $\log(\mathrm{loss}_t + \mathrm{LOG\_FLOOR})$ (a diverged run:
        $\log(\mathrm{ceiling} + \mathrm{LOG\_FLOOR})$), so halving a small loss counts as
        much as halving a large one; the mean of the raw loss is dominated by the early
        steps, and an optimizer meta-trained on it learns to be fast, not to end low.

    Returns:
      ``(system, theta, evaluate)``: the ``System``, the initial theta, and ``evaluate``,
      which gives the mean (normalized) step loss over ``num_eval_tasks`` held-out tasks
      (``"objective"``) and, at the final parameters (``final_metrics``),
      ``final_train_loss`` (the whole training set, ceiling for a diverged run),
      ``diverged`` (the fraction of runs) and, for classifiers, ``validation_accuracy``
      and ``validation_loss``.
    """
    horizon = check_positive_int(horizon, "horizon")
    run_lengths = _check_run_lengths(run_lengths, horizon)
    _check_meta_loss(meta_loss)
    config = {k: v for k, v in (("learning_rate", learning_rate), ("hidden", hidden)) if v is not None}
    arch = get_architecture(architecture, **config)
    task = inner_problem(problem, batch_size, dtype=dtype)
    fresh = _fresh_state(task, arch, dtype, run_lengths)
    step = _inner_step(task, arch, fresh, dtype, run_lengths, meta_loss)
    system = System(lambda theta, key: fresh(key), step, horizon)
    evaluate = episode_evaluator(
        system, jax.random.key(seed + 10_000), num_eval_tasks, final_metrics=lambda state: final_metrics(task, state)
    )
    return system, arch.init_theta(seed, dtype), evaluate


def _check_meta_loss(meta_loss: str) -> None:
    if meta_loss not in META_LOSSES:
        raise BadValue(
            f"`meta_loss`={meta_loss!r} must be 'loss' (the normalized step loss) or 'log' (its logarithm, "
            "log(loss + LOG_FLOOR)); e.g. meta_loss='log'."
        )


def _fresh_state(task: inner.InnerTask, arch: Architecture, dtype, run_lengths):
    """``fresh(key)``: the ``InnerState`` an inner run starts from (its task, init and optimizer state)."""

    def fresh(key):
        return InnerState(
            task.init(key),
            arch.init_state(task.num_params, dtype),
            key,
            jnp.zeros((), dtype),
            None if run_lengths is None else jnp.zeros((), jnp.int32),
        )

    return fresh


def _inner_step(task: inner.InnerTask, arch: Architecture, fresh, dtype, run_lengths, meta_loss: str):
    """``step(theta, state, t) -> (state, step loss)``: one inner step of ``learned_optimizer``'s
    system (frozen once diverged, restarting with ``fresh`` when an inner run ends)."""
    layout, ceiling = sizes_layout(task.sizes), task.ceiling

    def step(theta, state, t):
        count = t if run_lengths is None else state.count
        mask = None if task.mask is None else task.mask(state.key)
        value, g = jax.value_and_grad(task.loss)(state.params, state.key, count)
        bad = (state.diverged > 0.5) | ~jnp.isfinite(value) | (value > ceiling)
        g = jnp.where(bad, 0, g)
        updates, opt_state = arch.update(theta, g, state.opt_state, state.params, count, layout._replace(mask=mask))
        proposed = state.params + (updates if mask is None else mask * updates)
        bad = bad | ~jnp.all(jnp.isfinite(proposed))
        keep = lambda new, old: jnp.where(bad, old, new)
        new = InnerState(
            keep(proposed, state.params),
            jax.tree_util.tree_map(keep, opt_state, state.opt_state),
            state.key,
            jnp.maximum(state.diverged, bad.astype(dtype)),
            None if run_lengths is None else count + 1,
        )
        if run_lengths is not None:  # the inner run ends: the next starts inside the episode
            ended = new.count >= run_length(state.key, run_lengths)
            restart = fresh(jax.random.fold_in(state.key, t))
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(ended, a, b), restart, new)
        score = jnp.where(bad, jnp.asarray(ceiling, dtype), value)
        return new, (jnp.log(score + LOG_FLOOR) if meta_loss == "log" else score)

    return step


def final_metrics(task: inner.InnerTask, state: InnerState) -> dict:
    """The task's metrics at an inner run's final parameters, through its normalizer.

    Args:
      task: the inner task.
      state: the inner run's final ``InnerState``.

    Returns:
      the task's metrics, with ``final_train_loss`` (the whole training set's loss capped
      at the ceiling; the ceiling for a diverged run) in place of ``train_loss``, and
      ``diverged`` (1.0 for a diverged run).
    """
    metrics = task.metrics(state.params, state.key)
    train = metrics.pop("train_loss")
    capped = jnp.where(jnp.isfinite(train), jnp.minimum(train, task.ceiling), task.ceiling)
    return {
        "final_train_loss": jnp.where(state.diverged > 0.5, task.ceiling, capped),
        "diverged": state.diverged,
        **metrics,
    }
