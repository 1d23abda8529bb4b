"""The contract every estimator keeps, and the types an estimator is written against.

* What users hold: an `Estimator` is a pair of pure functions, `init` and `estimate`
  (as optax's `GradientTransformation` is `init` and `update`); `estimate` returns an
  `Estimate`.
* What an estimator author writes (see `unroll.builder.windowed`): a `Rule`, the
  accumulator carried along one trajectory, whose callables keep the `StartFn`,
  `StepFn` and `BeginFn` protocols; and a `WindowGradient`, which turns the `Window`
  the engine runs into a `Gradient`.

Layout. The state of a windowed estimator (`WindowState`) holds `num_workers x
num_particles` trajectories as leading axes $[W, P]$. Particles of one worker share
its episode keys (so antithetic pairs see the same data), but each keeps its own
system state.

Episodes. A `Worker` records `t`, the number of steps taken in its current episode.
`t == horizon` means the episode is over: the *next* step first starts a new episode
(fresh key, fresh accumulator) and then runs step 0 of it. So the step that ends an
episode is always credited with the old episode's accumulator, and the reset happens
lazily, with the theta of the window that runs the new episode. Fresh workers are
created in that "episode over" state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import jax

from unroll._tree import PyTree

__all__ = [
    "BeginFn",
    "EpisodeStart",
    "Estimate",
    "Estimator",
    "Gradient",
    "Rule",
    "StartFn",
    "Step",
    "StepFn",
    "Window",
    "WindowGradient",
    "WindowResult",
    "WindowState",
    "Worker",
]


class Estimate(NamedTuple):
    """What `Estimator.estimate` returns."""

    grad: PyTree  # the estimate of dL/dtheta, with theta's structure and dtypes
    state: PyTree  # the estimator's next state
    info: dict  # scalars: at least `loss` (mean loss of the steps unrolled) and `steps` (system steps taken)


class Estimator(NamedTuple):
    """A gradient estimator: a pair of pure, jit-able functions, in the style of optax.

    * `init(theta, key) -> state`: the estimator's and its workers' state;
    * `estimate(theta, state, key) -> Estimate(grad, state, info)`: advances every
      worker by one window and returns an estimate of $\\nabla_\\theta L(\\theta)$,
      $L(\\theta) = \\mathbb{E}_{\\text{key}}\\big[\\tfrac{1}{T}\\sum_{t<T} \\ell_t\\big]$,
      with the structure of `theta`.

    Anything with these two attributes is an estimator to `unroll.train`,
    `unroll.shard` and the diagnostics.
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    estimate: Callable[[PyTree, PyTree, jax.Array], Estimate]


class Worker(NamedTuple):
    """Trajectories' places in their episode streams (leading axes $[W, P]$ in a state)."""

    state: PyTree  # the system's state
    t: jax.Array  # int32, steps taken in the current episode; == horizon: over, the next step starts one
    key: jax.Array  # the key the next episode's keys are split from


class EpisodeStart(NamedTuple):
    """What a rule's `start` returns for one trajectory."""

    state: PyTree  # the system's initial state, from `system.init(theta, key)`
    acc: PyTree  # the fresh accumulator (e.g. PES's zero perturbation sum, RTRL's zero influence)


class Step(NamedTuple):
    """What a rule's `step` returns for one trajectory."""

    state: PyTree  # the system's next state
    acc: PyTree  # the next accumulator
    loss: jax.Array  # the step's scalar loss
    contribution: PyTree  # any pytree, summed over the window per trajectory (`WindowResult.total`)


class StartFn(Protocol):
    """`Rule.start`: begins one trajectory's episode."""

    def __call__(self, theta: PyTree, key: jax.Array, noise_key: jax.Array, noise: PyTree) -> EpisodeStart:
        """Starts an episode of one trajectory.

        Args:
            theta: the outer parameters (unbatched: every trajectory shares them).
            key: the episode's data key, one trajectory's (passed to `system.init`).
            noise_key: an independent key for per-episode noise (NRES, forward gradients).
            noise: this window's data for this one trajectory (PES's $\\epsilon$), or `None`.

        Returns:
            The episode's initial state and fresh accumulator.
        """


class StepFn(Protocol):
    """`Rule.step`: advances one trajectory by one step."""

    def __call__(self, theta: PyTree, state: PyTree, t: jax.Array, acc: PyTree, noise: PyTree) -> Step:
        """Advances one trajectory by one step (the engine vmaps it over all $W P$).

        Args:
            theta: the outer parameters (unbatched).
            state: this trajectory's system state.
            t: int32 scalar, the step's index in its episode, $0 \\le t <$ horizon.
            acc: this trajectory's accumulator.
            noise: this window's data for this one trajectory, or `None`.

        Returns:
            The next state and accumulator, the step's loss and its contribution.
        """


class BeginFn(Protocol):
    """`Rule.begin`: updates every accumulator as a window begins."""

    def __call__(self, acc: PyTree | None, noise: PyTree) -> PyTree:
        """Runs once per window, before any step of it, on all trajectories at once.

        Args:
            acc: every trajectory's accumulator, leaves with leading axes $[W, P]$;
                `None` for branched windows (truncated ES), which start from none.
            noise: this window's data for every trajectory (leading $[W, P]$).

        Returns:
            The accumulators the window starts from (leading $[W, P]$), e.g. PES's
            $\\xi + \\epsilon$.
        """


class Rule(NamedTuple):
    """What an estimator carries along one trajectory (its accumulator), and how.

    `start` and `step` see one trajectory (the engine vmaps them over the $W P$
    trajectories); `begin` sees all of them at once, with leading axes $[W, P]$.
    """

    start: StartFn  # begins an episode: fresh state and accumulator
    step: StepFn  # one step: state, accumulator, loss and contribution
    begin: BeginFn | None = None  # optional: the accumulators' update as a window begins


class WindowState(NamedTuple):
    """The state of every windowed estimator."""

    workers: Worker  # the [W, P] trajectories
    acc: PyTree = ()  # their accumulators, leading axes [W, P]
    shared: PyTree = ()  # the estimator's state not per trajectory (DNI's synthesizer); () for most


class WindowResult(NamedTuple):
    """One run of a window."""

    workers: Worker  # the advanced trajectories, [W, P]
    acc: PyTree  # their accumulators after the window
    total: PyTree  # per-trajectory sums of the steps' contributions, [W, P, ...]
    losses: jax.Array  # [W, P, K], the window's losses

    @property
    def end_states(self) -> PyTree:
        """The trajectories' system states after the window, $[W, P, \\ldots]$."""
        return self.workers.state

    @property
    def end_times(self) -> jax.Array:
        """$[W, P]$: steps taken in each trajectory's episode after the window."""
        return self.workers.t


class Window(NamedTuple):
    """One window, as a `WindowGradient` sees it.

    * `run(theta, start_floats=None) -> WindowResult` runs the window at `theta`
      (differentiable in theta), optionally with the float leaves of the incoming
      states replaced by `start_floats`, to differentiate through them (as DNI does).
    * `restart(theta) -> (states, finish)` is for full-episode estimators, whose
      trajectories sit between episodes: the next episodes' initial states
      ($[W, P, \\ldots]$, differentiable in theta) and `finish(final_states, losses)
      -> WindowResult`, the trajectories after such an episode run by other means.
    """

    run: Callable[..., WindowResult]  # the window at theta
    start_states: PyTree  # the incoming trajectories' states, [W, P, ...]
    start_times: jax.Array  # their times in their episodes, [W, P]
    num_steps: int  # the trajectory steps the window runs, W P K
    restart: Callable[[PyTree], tuple[PyTree, Callable[[PyTree, jax.Array], WindowResult]]]
    episode_keys: jax.Array  # [W, P], the data keys `restart` passes to system.init


class Gradient(NamedTuple):
    """What a `WindowGradient` returns."""

    grad: PyTree  # the estimate, theta's structure
    window: WindowResult  # the window it ran
    shared: PyTree = ()  # the estimator's updated shared state (`WindowState.shared`)
    info: dict = {}  # extra `info` scalars


class WindowGradient(Protocol):
    """How a window's contributions become the gradient."""

    def __call__(self, window: Window, theta: PyTree, shared: PyTree) -> Gradient:
        """Runs the window and forms the estimate.

        Args:
            window: the window to run.
            theta: the outer parameters.
            shared: the estimator's shared state (`WindowState.shared`).

        Returns:
            The estimate, the window run, the updated shared state and extra info.
        """
