"""The outer loop: estimate, update with optax, record, one jit-compiled step."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from unroll import resume
from unroll.progress import progress as progress_bar
from unroll.resume import fingerprint_hash
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
        raise ValueError(
            f"`on_nonfinite`={on_nonfinite!r} must be one of {ON_NONFINITE}; pass on_nonfinite='stop' "
            "(end the run at its last finite theta) or 'skip' (drop that step and go on)."
        )

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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during ``train`` with a checkpoint: the state after ``step``
    outer steps was saved to ``checkpoint``; calling ``train`` again with the same
    arguments resumes from it."""

    def __init__(self, step: int, checkpoint: str, signal_name: str):
        super().__init__(
            f"{signal_name} after outer step {step}; the run was saved to {checkpoint!r}; run it again with the same "
            "settings to resume."
        )
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


@contextlib.contextmanager
def _deferred_signals(enabled: bool):
    """While active, SIGINT and SIGTERM are recorded (in the yielded list) instead of
    acting, so the loop can save at a step boundary; a second signal interrupts at once."""
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


STOP_CHECK_EVERY = 16  # outer steps between host checks for "every run has stopped" (each one syncs)


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
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    run_info: dict | None = None,
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
      on_nonfinite: what a non-finite loss, gradient or theta does. ``"stop"``: that
        step is discarded and the run stops there (its state stays at the last finite
        one; with several seeds the others go on, and the loop ends early once every
        seed has stopped, so the history is shorter than ``num_steps``). ``"skip"``:
        that step is discarded and training goes on with the next key. Either way a
        ``RuntimeWarning`` names the run and the step.
      name: shown on the progress bar and in warnings.
      checkpoint: a file path (``.npz``, format in ``unroll.resume``). The whole run
        (theta, optimizer, estimator and worker state, keys, counters and the history
        so far) is saved there every ``checkpoint_every`` outer steps, at the end, and
        on Ctrl-C or SIGTERM (then ``TrainingInterrupted`` is raised). If the file
        exists, the run resumes from it and gives bit for bit the history and theta of
        an uninterrupted run (on the same machine and versions); a checkpoint written
        by a different run (other settings, theta, key or state structure) or a
        corrupt one is refused with ``unroll.resume.CheckpointError``.
      checkpoint_every: outer steps between saves (0: only at the end and on interrupt).
      run_info: JSON-able facts that identify the run, added to the checkpoint's
        fingerprint (a resume with different ones is refused).

    Returns:
      ``(theta, history)``: the final (last finite) theta and a dict of numpy arrays
      ``[steps run]`` (``[num_seeds, steps run]``): every ``info`` entry of the
      estimator, ``grad_norm``, ``accepted``, plus ``first_nonfinite`` (-1 if none) and ``num_rejected``;
      ``train_time_s`` (seconds in outer steps, compile and evaluation excluded),
      ``compile_s``, and with ``eval_fn`` ``eval_time_s`` (training seconds at each ``eval_step``).
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(
            f"`eval_fn` must be a function theta -> dict of scalars, got {type(eval_fn).__name__}; "
            "pass e.g. eval_fn=lambda theta: {'norm': jnp.sum(theta ** 2)}."
        )
    if eval_every:
        eval_every = check_positive_int(
            eval_every,
            "eval_every",
            "Pass 0 (evaluate only after the last step) or an int >= 1, the outer steps between evaluations.",
        )
    if eval_every and eval_fn is None:
        raise ValueError("`eval_every` is set but `eval_fn` is None; pass eval_fn=lambda theta: {...}.")
    if checkpoint_every and checkpoint is None:
        raise ValueError(
            f"`checkpoint_every`={checkpoint_every} is set but `checkpoint` is None; pass checkpoint='run.npz'."
        )
    if checkpoint_every:
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
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

    log = _Log()
    fingerprint = None
    if checkpoint is not None:
        fingerprint = {
            "name": name.strip(),
            "num_steps": num_steps,
            "num_seeds": num_seeds,
            "on_nonfinite": on_nonfinite,
            "eval_every": eval_every,
            "theta": fingerprint_hash(theta),
            "key": fingerprint_hash(key),
            **(run_info or {}),
        }
        if os.path.exists(checkpoint):
            (state, run_key), log = log.restored(checkpoint, (state, run_key), fingerprint)
            state, run_key = jax.device_put((state, run_key))
    if log.complete:
        return _finish(state, log, on_nonfinite, name)

    compile_start = time.perf_counter()
    outer = jax.jit(outer, donate_argnums=0).lower(state, run_key).compile()
    log.compile_s = time.perf_counter() - compile_start
    eval_one = jax.jit(eval_one) if eval_one is not None else None
    resumed = time.perf_counter()  # seconds in outer steps are counted in log.elapsed (evaluation excluded)

    def evaluate(i):
        nonlocal resumed
        jax.block_until_ready(state.theta)
        log.elapsed += time.perf_counter() - resumed
        log.evals.append(eval_one(state.theta))
        log.eval_steps.append(i)
        log.eval_times.append(log.elapsed)
        jax.block_until_ready(log.evals[-1])
        resumed = time.perf_counter()

    def save(done: int, complete: bool = False):
        nonlocal resumed
        jax.block_until_ready(state.theta)
        log.elapsed += time.perf_counter() - resumed
        log.save(checkpoint, (state, run_key), fingerprint, done, complete)
        resumed = time.perf_counter()

    def postfix() -> str:
        if not log.records:
            return ""
        loss = float(np.mean(np.asarray(log.records[-1]["loss"])))
        return f"loss={loss:.4g}"

    done = len(log.records)
    with _deferred_signals(checkpoint is not None) as received:
        for i in progress_bar(num_steps, desc=name, enabled=progress, postfix=postfix, start=done):
            if eval_one is not None and eval_every and i % eval_every == 0:
                evaluate(i)
            state, metrics = outer(state, run_key)
            log.records.append(metrics)
            done = i + 1
            if received:
                save(done)
                raise TrainingInterrupted(done, checkpoint, signal.Signals(received[0]).name)
            if checkpoint_every and done % checkpoint_every == 0 and done < num_steps:
                save(done)
            if (
                on_nonfinite == "stop"
                and done % STOP_CHECK_EVERY == 0
                and np.all(np.asarray(state.first_nonfinite) >= 0)
            ):
                break  # every run has stopped: the rest would only repeat the last finite state
        if eval_one is not None:
            evaluate(done)
        if checkpoint is not None:
            save(done, complete=True)
    if eval_one is None:
        jax.block_until_ready(state.theta)
        log.elapsed += time.perf_counter() - resumed
    return _finish(state, log, on_nonfinite, name)


class _Log:
    """The host side of a run: per-step metrics, evaluations and times (what a
    checkpoint stores besides the state)."""

    def __init__(self):
        self.records: list[dict] = []  # per outer step, metrics (device or numpy arrays)
        self.evals: list[dict] = []
        self.eval_steps: list[int] = []
        self.eval_times: list[float] = []
        self.elapsed = 0.0
        self.compile_s = 0.0
        self.complete = False

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        records, evals = jax.device_get(self.records), jax.device_get(self.evals)
        for k in records[0] if records else ():
            out[f"record/{k}"] = np.stack([np.asarray(r[k]) for r in records], axis=-1)
        for k in evals[0] if evals else ():
            out[f"eval/{k}"] = np.stack([np.asarray(e[k]) for e in evals], axis=-1)
        out["eval_step"] = np.asarray(self.eval_steps, np.int64)
        out["eval_time_s"] = np.asarray(self.eval_times, np.float64)
        return out

    def save(self, path, state, fingerprint, done, complete):
        meta = {"step": done, "complete": complete, "elapsed": self.elapsed, "compile_s": self.compile_s}
        resume.save(path, state, self.arrays(), fingerprint, meta)

    def restored(self, path, like, fingerprint):
        state, arrays, meta = resume.load(path, like, fingerprint)
        log = _Log()
        done = int(meta["step"])
        records = {k[len("record/") :]: v for k, v in arrays.items() if k.startswith("record/")}
        log.records = [{k: v[..., j] for k, v in records.items()} for j in range(done)]
        evals = {k[len("eval/") :]: v for k, v in arrays.items() if k.startswith("eval/")}
        log.eval_steps = [int(s) for s in arrays["eval_step"]]
        log.evals = [{k: v[..., j] for k, v in evals.items()} for j in range(len(log.eval_steps))]
        log.eval_times = [float(t) for t in arrays["eval_time_s"]]
        log.elapsed, log.compile_s, log.complete = (
            float(meta["elapsed"]),
            float(meta["compile_s"]),
            bool(meta["complete"]),
        )
        return state, log


def _finish(state: TrainState, log: _Log, on_nonfinite: str, name: str):
    arrays = log.arrays()  # the same stacked arrays a checkpoint stores
    history = {k[len("record/") :]: v for k, v in arrays.items() if k.startswith("record/")}
    history.update({k: v for k, v in arrays.items() if k.startswith("eval/")})
    if log.evals:
        history["eval_step"], history["eval_time_s"] = arrays["eval_step"], arrays["eval_time_s"]
    history["train_time_s"] = np.asarray(log.elapsed)
    history["compile_s"] = np.asarray(log.compile_s)
    history["first_nonfinite"] = np.asarray(state.first_nonfinite)
    history["num_rejected"] = np.asarray(state.num_rejected)
    bad = np.atleast_1d(history["first_nonfinite"])
    if np.any(bad >= 0):
        what = "stopped at" if on_nonfinite == "stop" else "skipped steps from"
        warnings.warn(
            f"{name.strip()}: a non-finite loss, gradient or theta appeared; {int(np.sum(bad >= 0))} of {bad.size} "
            f"run(s) {what} outer step(s) {sorted({int(b) for b in bad if b >= 0})}. The returned theta is the "
            "last finite one; lower the learning rate or sigma, or clip gradients (optax.clip_by_global_norm).",
            RuntimeWarning,
            stacklevel=3,
        )
    return state.theta, history
