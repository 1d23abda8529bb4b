"""The outer loop: estimate, update with optax, record, one jit-compiled step."""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unroll.progress import progress as progress_bar
from unroll.system import check_positive_int
from unroll.window import Estimator

ON_NONFINITE = ("stop", "skip")


class TrainState(NamedTuple):
    theta: Any
    opt_state: Any
    estimator_state: Any
    step: jax.Array  # outer steps taken
    first_nonfinite: jax.Array  # outer step of the first non-finite loss/gradient, -1 if none
    num_rejected: jax.Array  # outer steps not applied (non-finite, or after a stop)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.abs(x) ** 2) for x in jax.tree_util.tree_leaves(tree)))


def make_train_step(estimator: Estimator, optimizer: optax.GradientTransformation, on_nonfinite: str = "stop"):
    """One outer step ``(TrainState, key) -> (TrainState, metrics)``, pure and jit-able.

    A step whose loss, gradient or new theta is not finite is discarded; with
    ``on_nonfinite="stop"`` every later step is discarded too (the state stays at the
    last finite one), with ``"skip"`` training goes on with the next key.
    """
    if on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"`on_nonfinite`={on_nonfinite!r} must be one of {ON_NONFINITE}.")

    def step(state: TrainState, key: jax.Array):
        grad, estimator_state, info = estimator.estimate(state.theta, state.estimator_state, key)
        updates, opt_state = optimizer.update(grad, state.opt_state, state.theta)
        theta = optax.apply_updates(state.theta, updates)
        finite = _all_finite((grad, info["loss"], theta))
        stopped = (state.first_nonfinite >= 0) & (on_nonfinite == "stop")
        accept = finite & ~stopped
        kept = jax.tree_util.tree_map(
            lambda new, old: jnp.where(accept, new, old),
            (theta, opt_state, estimator_state),
            (state.theta, state.opt_state, state.estimator_state),
        )
        first = jnp.where((state.first_nonfinite < 0) & ~finite, state.step, state.first_nonfinite)
        metrics = dict(info, grad_norm=_global_norm(grad), accepted=accept)
        new_state = TrainState(*kept, state.step + 1, first, state.num_rejected + (~accept).astype(jnp.int32))
        return new_state, metrics

    return step


def train(
    estimator: Estimator,
    optimizer: optax.GradientTransformation,
    theta,
    key: jax.Array,
    num_steps: int,
    *,
    num_seeds: int | None = None,
    eval_fn: Callable[[Any], dict] | None = None,
    eval_every: int = 0,
    progress: bool = True,
    on_nonfinite: str = "stop",
    name: str = "train",
):
    """Runs ``num_steps`` outer steps ``theta <- optax update(estimate(theta))``.

    Args:
      estimator: an ``unroll`` estimator.
      optimizer: an optax ``GradientTransformation``.
      theta: the initial outer parameters.
      key: the run's key; step ``i`` uses ``fold_in(key, i)``.
      num_steps: number of outer steps.
      num_seeds: run this many independent seeds at once (a vmap axis; keys
        ``split(key, num_seeds)``); the returned theta and history gain a leading
        seed axis.
      eval_fn: ``theta -> dict of scalars``, jit-compiled, run every ``eval_every``
        steps (and after the last); results go to ``history["eval/<name>"]`` at steps
        ``history["eval_step"]``.
      progress: draw a progress bar.
      on_nonfinite: ``"stop"`` freezes a run at its first non-finite loss, gradient or
        theta and keeps the last finite theta; ``"skip"`` discards that step only.
      name: shown on the progress bar and in warnings.

    Returns:
      ``(theta, history)``: the final (last finite) theta and a dict of numpy arrays
      ``[num_steps]`` (``[num_seeds, num_steps]``): every ``info`` entry of the
      estimator, ``grad_norm``, ``accepted``, plus ``first_nonfinite`` (-1 if none) and ``num_rejected``;
      ``train_time_s`` (seconds in outer steps, compile and evaluation excluded),
      ``compile_s``, and with ``eval_fn`` ``eval_time_s`` (training seconds at each ``eval_step``).
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    if eval_every and eval_fn is None:
        raise ValueError("`eval_every` is set but `eval_fn` is None; pass eval_fn=lambda theta: {...}.")
    step = make_train_step(estimator, optimizer, on_nonfinite)

    def start(key):
        init_key, run_key = jax.random.split(key)
        estimator_state = estimator.init(theta, init_key)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(theta, optimizer.init(theta), estimator_state, zero, zero - 1, zero), run_key

    def outer(state, run_key):
        return step(state, jax.random.fold_in(run_key, state.step))

    if num_seeds is not None:
        num_seeds = check_positive_int(num_seeds, "num_seeds")
        start, outer = jax.vmap(start), jax.vmap(outer)
        eval_one = jax.vmap(eval_fn) if eval_fn is not None else None
        key = jax.random.split(key, num_seeds)
    else:
        eval_one = eval_fn
    state, run_key = jax.jit(start)(key)
    compile_start = time.perf_counter()
    outer = jax.jit(outer, donate_argnums=0).lower(state, run_key).compile()
    compile_s = time.perf_counter() - compile_start
    eval_one = jax.jit(eval_one) if eval_one is not None else None

    records, evals, eval_steps, eval_times = [], [], [], []
    last = {}
    elapsed, resumed = 0.0, time.perf_counter()  # seconds in outer steps (evaluation excluded)

    def evaluate(i):
        nonlocal elapsed, resumed
        jax.block_until_ready(state.theta)
        elapsed += time.perf_counter() - resumed
        evals.append(eval_one(state.theta))
        eval_steps.append(i)
        eval_times.append(elapsed)
        jax.block_until_ready(evals[-1])
        resumed = time.perf_counter()

    def postfix() -> str:
        if not last:
            return ""
        loss = float(np.mean(np.asarray(last["loss"])))
        return f"loss={loss:.4g}"

    for i in progress_bar(num_steps, desc=name, enabled=progress, postfix=postfix):
        if eval_one is not None and eval_every and i % eval_every == 0:
            evaluate(i)
        state, metrics = outer(state, run_key)
        records.append(metrics)
        last = metrics
    if eval_one is not None:
        evaluate(num_steps)
    else:
        jax.block_until_ready(state.theta)
        elapsed += time.perf_counter() - resumed

    records = jax.device_get(records)
    history = {k: np.stack([r[k] for r in records], axis=-1) for k in records[0]}
    for k in evals[0] if evals else ():
        history[f"eval/{k}"] = np.stack([np.asarray(e[k]) for e in jax.device_get(evals)], axis=-1)
    if evals:
        history["eval_step"] = np.asarray(eval_steps)
        history["eval_time_s"] = np.asarray(eval_times)
    history["train_time_s"] = np.asarray(elapsed)
    history["compile_s"] = np.asarray(compile_s)
    history["first_nonfinite"] = np.asarray(state.first_nonfinite)
    history["num_rejected"] = np.asarray(state.num_rejected)
    bad = np.atleast_1d(history["first_nonfinite"])
    if np.any(bad >= 0):
        what = "was stopped at" if on_nonfinite == "stop" else "skipped steps from"
        warnings.warn(
            f"{name}: a non-finite loss, gradient or theta appeared; {int(np.sum(bad >= 0))} of {bad.size} "
            f"run(s) {what} outer step(s) {sorted(set(int(b) for b in bad if b >= 0))}. The returned theta is the "
            "last finite one; lower the learning rate or sigma, or clip gradients (optax.clip_by_global_norm).",
            RuntimeWarning,
            stacklevel=2,
        )
    return state.theta, history
