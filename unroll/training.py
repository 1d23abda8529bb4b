"""`unroll.train`, the host side of the outer loop: compile, loop, evaluate, save and
resume, signals, the clock, callbacks and the progress bar. The pure step it runs is
`unroll.train_step.make_train_step`."""

from __future__ import annotations

import contextlib
import functools
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
from unroll._errors import BadType, BadValue
from unroll._progress import progress as progress_bar
from unroll._system import check_positive_int
from unroll.contract import Estimator
from unroll.resume import fingerprint_hash
from unroll.train_step import TrainState, make_train_step

__all__ = ["STOP_CHECK_EVERY", "TrainingInterrupted", "train"]


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `train` with a checkpoint: the run was saved, and can be resumed.

    The state after `step` outer steps was saved to `checkpoint`; calling `train` again
    with the same arguments resumes from it.

    Attributes:
      step: the outer steps done when the run was saved.
      checkpoint: the path of the checkpoint file written.
      signal_name: the signal that interrupted the run (`"SIGINT"` or `"SIGTERM"`).
    """

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


class _Settings(NamedTuple):
    """How a run loops, evaluates and saves: ``train``'s arguments once checked."""

    num_steps: int
    eval_every: int
    checkpoint: str | None
    checkpoint_every: int
    on_nonfinite: str  # checked by make_train_step
    name: str
    time_limit: float | None = None  # seconds of outer steps, then stop
    callback: Callable[[int, dict], Any] | None = None  # fn(step, metrics) on the host
    callback_every: int = 0


class _Program(NamedTuple):
    """What a run executes: for one seed, or vmapped over ``num_seeds``."""

    start: Callable  # jitted (theta, key) -> (TrainState, run_key)
    outer: Callable  # jitted (TrainState, run_key) -> (TrainState, metrics), its state donated
    evaluate: Callable | None  # theta -> dict of scalars
    key: jax.Array  # what ``start`` takes: the run's key, or split(key, num_seeds)
    num_seeds: int | None


class _Run(NamedTuple):
    """The parts of a run that stay fixed while it loops."""

    program: _Program
    settings: _Settings
    run_key: jax.Array
    fingerprint: dict | None  # None: no checkpoint


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
    time_limit: float | None = None,
    callback: Callable[[int, dict], Any] | None = None,
    callback_every: int = 10,
):
    r"""Runs `num_steps` outer steps $\theta \leftarrow \theta + \mathrm{update}(\hat g(\theta))$ with optax.

    Each outer step asks `estimator` for a gradient estimate $\hat g(\theta)$ and applies the `optimizer`'s update
    to it (see `unroll.train_step.make_train_step`, the pure step this loop runs). Training the same estimator and
    optimizer objects again in one process (resuming, another `num_steps`) reuses the compiled step, as `jax.jit`
    reuses a function's.

    Args:
      estimator: an `unroll` estimator.
      optimizer: an optax `GradientTransformation`.
      theta: the initial outer parameters.
      key: the run's key; step `i` uses `fold_in(key, i)`.
      num_steps: number of outer steps.
      num_seeds: run this many independent seeds at once (a vmap axis; keys `split(key, num_seeds)`); the
        returned theta and the history's per-step entries gain a leading seed axis (see Returns).
      eval_fn: `theta -> dict of scalars`, jit-compiled (vmapped over the seeds with `num_seeds`), run every
        `eval_every` steps (and after the last); results go to `history["eval/<name>"]` at steps
        `history["eval_step"]`.
      eval_every: outer steps between evaluations with `eval_fn`: it runs before steps $0, k, 2k, \dots$ and once
        after the last step. 0 (the default): only after the last step. Setting it needs `eval_fn`.
      progress: draw a progress bar.
      on_nonfinite: a step with a non-finite loss, gradient or theta is discarded (a `RuntimeWarning` names the
        run and the step). `"stop"`: the run stops there (its state stays at the last finite one; with several
        seeds the others go on, and the loop ends early once every seed has stopped, so the history is shorter
        than `num_steps`). `"skip"`: training goes on with the next key.
      name: shown on the progress bar and in warnings.
      checkpoint: a file path (`.npz`, format in `unroll.resume`) where the whole run (theta, optimizer, estimator
        and worker state, keys, counters and the history so far) is saved every `checkpoint_every` outer steps, at
        the end, and on Ctrl-C or SIGTERM (then `TrainingInterrupted` is raised). An existing one is resumed: bit
        for bit the history and theta of an uninterrupted run (on the same machine and versions); one from another
        run (other settings, theta, key or state structure) or a corrupt one is refused with
        `unroll.resume.CheckpointError`.
      checkpoint_every: outer steps between saves (0: only at the end and on interrupt).
      run_info: JSON-able facts that identify the run, added to the checkpoint's fingerprint (a resume with
        different ones is refused).
      time_limit: a wall-clock budget in seconds of outer steps (compile and evaluation excluded, as in
        `train_time_s`): the run stops after the step that exhausts it, so the history may be shorter than
        `num_steps` (for comparisons at equal training time). `None`: no limit.
      callback: `fn(step, metrics)`, called on the host every `callback_every` outer steps and once at the end
        (e.g. `unroll.callbacks.tensorboard(logdir)`), with `step` the outer steps done and `metrics` the steps
        since the previous call, as numpy arrays `[k]` (`[num_seeds, k]`): `metrics["step"]` (the outer steps
        done after each of them, as in the history's `eval_step`), every per-step history entry, and the
        evaluations made since (`eval_step`, `eval/<name>`). It waits for those steps to finish (the steps are
        otherwise dispatched ahead), and its own time is not counted in `train_time_s`; a resumed run calls it
        from the step it resumes at.
      callback_every: outer steps between calls (a positive int).

    Returns:
      `(theta, history)`: the final (last finite) theta (with `num_seeds=S`, every leaf gains a leading axis `[S]`)
      and a dict of numpy arrays. With $T$ the outer steps run (`num_steps`, or fewer when the run stopped early)
      and $E$ the evaluations made, its entries and their shapes with `num_seeds=None` | with `num_seeds=S` are:

      - every `info` entry of the estimator (at least `loss` and `steps`), `grad_norm` and `accepted` (whether
        the step was applied): per outer step, `[T]` | `[S, T]`;
      - with `eval_fn`, `eval/<name>` for each key the evaluation returns: `[E]` | `[S, E]`; and, shared by the
        seeds, `eval_step` (outer steps done before each evaluation: $0, k, 2k, \dots$ then $T$, with
        $k$ = `eval_every`; only $T$ with `eval_every=0`) and `eval_time_s` (training seconds at each
        `eval_step`): `[E]` | `[E]`;
      - `first_nonfinite` (outer step of the first non-finite step, -1 if none) and `num_rejected` (steps not
        applied): `[]` | `[S]`;
      - `train_time_s` (seconds in outer steps, compile and evaluation excluded) and `compile_s`: `[]` | `[]`,
        one number for the whole run.

    Raises:
      TrainingInterrupted: on Ctrl-C or SIGTERM while training with a `checkpoint`, once the run is saved.
    """
    settings = _check_arguments(num_steps, eval_fn, eval_every, checkpoint, checkpoint_every, on_nonfinite, name)
    settings = settings._replace(time_limit=_check_time_limit(time_limit), **_check_callback(callback, callback_every))
    program = _build(estimator, optimizer, theta, key, num_seeds, eval_fn, on_nonfinite)
    run, state, log = _start(program, settings, theta, run_info)
    state = state if log.complete else _run(run, state, log, progress)  # a finished run is only read back
    return _finish(state, log, on_nonfinite, name)


def _check_arguments(num_steps, eval_fn, eval_every, checkpoint, checkpoint_every, on_nonfinite, name) -> _Settings:
    num_steps = check_positive_int(num_steps, "num_steps")
    if eval_fn is not None and not callable(eval_fn):
        raise BadType(
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
        raise BadValue("`eval_every` is set but `eval_fn` is None; pass eval_fn=lambda theta: {...}.")
    if checkpoint_every and checkpoint is None:
        raise BadValue(
            f"`checkpoint_every`={checkpoint_every} is set but `checkpoint` is None; pass checkpoint='run.npz'."
        )
    if checkpoint_every:
        checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    return _Settings(num_steps, eval_every, checkpoint, checkpoint_every, on_nonfinite, name)


def _check_time_limit(time_limit) -> float | None:
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)):
        raise BadType(f"`time_limit` must be a number of seconds or None, got {time_limit!r}; e.g. time_limit=600.0.")
    if not 0 < time_limit < float("inf"):
        raise BadValue(
            f"`time_limit`={time_limit!r} must be a positive number of seconds (or None for no limit), "
            "e.g. time_limit=600.0."
        )
    return float(time_limit)


def _check_callback(callback, callback_every) -> dict:
    if callback is None:
        return {}
    if not callable(callback):
        raise BadType(
            f"`callback` must be a function fn(step, metrics) (or None), got {type(callback).__name__}; "
            "pass e.g. callback=unroll.callbacks.tensorboard('runs/tb') or callback=lambda step, m: print(step)."
        )
    every = check_positive_int(
        callback_every, "callback_every", "Pass an int >= 1, the outer steps between calls of `callback`."
    )
    return {"callback": callback, "callback_every": every}


def _build(estimator, optimizer, theta, key, num_seeds, eval_fn, on_nonfinite) -> _Program:
    batched = num_seeds is not None
    start, outer = _compiled_steps(estimator, optimizer, on_nonfinite, batched)
    if not batched:
        return _Program(start, outer, eval_fn, key, None)
    num_seeds = check_positive_int(num_seeds, "num_seeds")
    evaluate = jax.vmap(eval_fn) if eval_fn is not None else None
    return _Program(start, outer, evaluate, jax.random.split(key, num_seeds), num_seeds)


def _compiled_steps(estimator, optimizer, on_nonfinite: str, batched: bool) -> tuple[Callable, Callable]:
    """The jitted ``start`` and outer step, one pair per (estimator, optimizer, on_nonfinite, seeds or not) in a
    process.

    Training the same estimator and optimizer objects again (a resumed run, a longer one) reuses their traces and
    compiled executables, as ``jax.jit`` reuses them for the same function; as there, what the estimator's
    functions read from Python globals is fixed when they are first traced. Unhashable ones are not cached."""
    try:
        return _cached_steps(estimator, optimizer, on_nonfinite, batched)
    except TypeError:  # an unhashable estimator or optimizer (a user's class with __eq__ and no __hash__)
        return _cached_steps.__wrapped__(estimator, optimizer, on_nonfinite, batched)


@functools.lru_cache(maxsize=16)
def _cached_steps(estimator, optimizer, on_nonfinite: str, batched: bool) -> tuple[Callable, Callable]:
    step = make_train_step(estimator, optimizer, on_nonfinite)

    def start(theta, key):
        init_key, run_key = jax.random.split(key)
        estimator_state = estimator.init(theta, init_key)
        zero = jnp.zeros((), jnp.int32)
        return TrainState(theta, optimizer.init(theta), estimator_state, zero, zero - 1, zero), run_key

    def outer(state, run_key):
        return step(state, jax.random.fold_in(run_key, state.step))

    if batched:  # the seeds share theta
        start, outer = jax.vmap(start, in_axes=(None, 0)), jax.vmap(outer)
    return jax.jit(start), jax.jit(outer, donate_argnums=0)


def _fingerprint(settings: _Settings, program: _Program, theta, run_info: dict | None) -> dict:
    """What identifies a run, so that a checkpoint written by another one is refused."""
    return {
        "name": settings.name.strip(),
        "num_steps": settings.num_steps,
        "num_seeds": program.num_seeds,
        "on_nonfinite": settings.on_nonfinite,
        "eval_every": settings.eval_every,
        "theta": fingerprint_hash(theta),
        "key": fingerprint_hash(program.key),
        **(run_info or {}),
    }


def _start(program: _Program, settings: _Settings, theta, run_info: dict | None) -> tuple[_Run, TrainState, _Log]:
    """The run's fixed parts and its state and log to go on from: fresh, or read from an existing checkpoint."""
    # the fresh state is built even on a resume: it is the structure the checkpoint is read into
    state, run_key = program.start(theta, program.key)
    log, fingerprint = _Log(), None
    if settings.checkpoint is not None:
        fingerprint = _fingerprint(settings, program, theta, run_info)
        if os.path.exists(settings.checkpoint):
            (state, run_key), log = log.restored(settings.checkpoint, (state, run_key), fingerprint)
            state, run_key = jax.device_put((state, run_key))
    return _Run(program, settings, run_key, fingerprint), state, log


def _compile(program: _Program, state: TrainState, run_key: jax.Array) -> tuple[_Program, float]:
    """The program with its outer step compiled ahead (so its seconds are ``compile_s``, not
    training time) and its evaluation jit-compiled; and the seconds compiling took."""
    compile_start = time.perf_counter()
    outer = program.outer.lower(state, run_key).compile()  # (jitted by _compiled_steps)
    compile_s = time.perf_counter() - compile_start
    evaluate = jax.jit(program.evaluate) if program.evaluate is not None else None
    return program._replace(outer=outer, evaluate=evaluate), compile_s


class _Clock:
    """Adds the seconds spent in outer steps to ``log.elapsed``: it runs from its creation
    and between pauses, so that evaluating and saving are not counted."""

    def __init__(self, log: _Log):
        self.log = log
        self.since = time.perf_counter()

    def seconds(self, step) -> float:
        """Training seconds so far, once the steps dispatched have run."""
        jax.block_until_ready(step)
        return self.log.elapsed + time.perf_counter() - self.since

    def stop(self, theta) -> None:
        jax.block_until_ready(theta)  # steps are dispatched asynchronously: count them until they end
        self.log.elapsed += time.perf_counter() - self.since

    @contextlib.contextmanager
    def paused(self, theta):
        self.stop(theta)
        yield
        self.since = time.perf_counter()


def _run(run: _Run, state: TrainState, log: _Log, progress: bool) -> TrainState:
    """Compiles the outer step and runs the loop from the step ``log`` ends at."""
    program, log.compile_s = _compile(run.program, state, run.run_key)
    run = run._replace(program=program)
    clock = _Clock(log)
    state = _loop(run, state, log, clock, progress)
    if program.evaluate is None:  # otherwise the last evaluation counted the steps' seconds
        clock.stop(state.theta)
    return state


def _loop(run: _Run, state: TrainState, log: _Log, clock: _Clock, progress: bool) -> TrainState:
    """The outer steps from the one ``log`` ends at, with the evaluations and saves due; on Ctrl-C or SIGTERM
    it saves and raises ``TrainingInterrupted``."""
    settings, program = run.settings, run.program
    done = log.delivered = len(log.records)  # a resumed run calls the callback from where it resumes
    log.evals_delivered = len(log.evals)
    postfix = lambda: _loss_postfix(log.records)
    with _deferred_signals(settings.checkpoint is not None) as received:
        for i in progress_bar(settings.num_steps, desc=settings.name, enabled=progress, postfix=postfix, start=done):
            if program.evaluate is not None and settings.eval_every and i % settings.eval_every == 0:
                _evaluate(run, state, log, clock, i)
            state, metrics = program.outer(state, run.run_key)
            log.records.append(metrics)
            done = i + 1
            if settings.callback is not None and done % settings.callback_every == 0:
                _deliver(settings.callback, state, log, clock)
            if received:
                _deliver(settings.callback, state, log, clock)
                _save(run, state, log, clock, done)
                raise TrainingInterrupted(done, settings.checkpoint, signal.Signals(received[0]).name)
            if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < settings.num_steps:
                _save(run, state, log, clock, done)
            if _all_stopped(settings.on_nonfinite, state, done):
                break  # the rest would only repeat the last finite state
            if settings.time_limit is not None and clock.seconds(state.step) >= settings.time_limit:
                break
        if program.evaluate is not None:
            _evaluate(run, state, log, clock, done)
        _deliver(settings.callback, state, log, clock)
        if settings.checkpoint is not None:
            _save(run, state, log, clock, done, complete=True)
    return state


def _evaluate(run: _Run, state: TrainState, log: _Log, clock: _Clock, step: int) -> None:
    with clock.paused(state.theta):
        log.evals.append(run.program.evaluate(state.theta))
        log.eval_steps.append(step)
        log.eval_times.append(log.elapsed)
        jax.block_until_ready(log.evals[-1])  # so that its seconds are not counted as the next steps'


def _deliver(callback, state: TrainState, log: _Log, clock: _Clock) -> None:
    """Calls ``callback(step, metrics)`` with the steps and evaluations it has not been given yet (none: no call)."""
    if callback is None or (log.delivered == len(log.records) and log.evals_delivered == len(log.evals)):
        return
    with clock.paused(state.theta):
        first, done = log.delivered, len(log.records)
        metrics = {"step": np.arange(first + 1, done + 1)}
        metrics.update(_stacked(log.records[first:]))
        if log.evals_delivered < len(log.evals):
            metrics["eval_step"] = np.asarray(log.eval_steps[log.evals_delivered :], np.int64)
            metrics.update({f"eval/{k}": v for k, v in _stacked(log.evals[log.evals_delivered :]).items()})
        log.delivered, log.evals_delivered = done, len(log.evals)
        callback(done, metrics)


def _stacked(records: list[dict]) -> dict[str, np.ndarray]:
    """Per-step dicts of arrays as one dict of arrays, steps on the last axis."""
    records = jax.device_get(records)
    return {k: np.stack([np.asarray(r[k]) for r in records], axis=-1) for k in (records[0] if records else ())}


def _save(run: _Run, state: TrainState, log: _Log, clock: _Clock, done: int, complete: bool = False) -> None:
    with clock.paused(state.theta):
        log.save(run.settings.checkpoint, (state, run.run_key), run.fingerprint, done, complete)


def _all_stopped(on_nonfinite: str, state: TrainState, done: int) -> bool:
    """Every run has stopped at a non-finite step (looked at only every ``STOP_CHECK_EVERY``
    steps: it waits for the device)."""
    return (
        on_nonfinite == "stop" and done % STOP_CHECK_EVERY == 0 and bool(np.all(np.asarray(state.first_nonfinite) >= 0))
    )


def _loss_postfix(records: list[dict]) -> str:
    if not records:
        return ""
    loss = float(np.mean(np.asarray(records[-1]["loss"])))
    return f"loss={loss:.4g}"


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
        self.delivered = 0  # records and evaluations given to the callback
        self.evals_delivered = 0

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"record/{k}": v for k, v in _stacked(self.records).items()}
        out.update({f"eval/{k}": v for k, v in _stacked(self.evals).items()})
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
            "last finite one; lower the learning rate or sigma, or clip gradients (optax.clip_by_global_norm). "
            "The ES-family estimators (pes, nres, gpes, es, truncated_es) can leave diverging trajectories out of "
            "the estimate instead: nonfinite='drop'.",
            RuntimeWarning,
            stacklevel=3,  # train's caller: train calls this itself
        )
    return state.theta, history
