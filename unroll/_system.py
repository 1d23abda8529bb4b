"""The unrolled-system interface and the checks that make bad input fail early.

A system is anything with three attributes (``System`` is the reference type):

* ``init(theta, key) -> state`` starts one episode (``state`` is any pytree);
* ``step(theta, state, t) -> (state, loss)`` advances one step, ``t`` is the
  int32 index of the step inside the episode, ``0 <= t < horizon``;
* ``horizon``: the episode length ``T`` (a Python int);
* optionally ``episode(theta, key) -> losses [horizon]``, the parallel form: the same
  per-step losses as stepping the episode that ``init(theta, key)`` starts, computed in
  parallel over time (e.g. by ``unroll.parallel.linear_recurrence``). Only estimators
  that need it (``parallel_bptt``) read it; a system without it is unchanged everywhere.

The objective is the mean per-step loss of an episode,
``L(theta) = E_key[(1/T) sum_t loss_t]``.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from unroll._errors import BadType, BadValue
from unroll._jax_compat import used_inputs
from unroll._tree import PyTree


class System(NamedTuple):
    r"""An unrolled computation: an episode of `horizon` steps of `step` from `init`.

    The objective every estimator targets is the mean per-step loss of an episode,

    $$
    L(\theta) = \mathbb E_{\text{key}}\Big[\frac{1}{T} \sum_{t<T} \ell_t\Big],
    $$

    $T$ = `horizon`. Any object with `init`, `step` and `horizon` attributes is a system to
    the estimators; this is the reference type. `init` and `step` must be pure, jit-able
    functions of their arguments (closing over constants is fine); they are traced against
    `theta` at each estimator's `init`, before anything runs.

    Attributes:
        init: `init(theta, key) -> state` starts one episode: `theta` the outer parameters
            (a pytree of float arrays), `key` a JAX PRNG key (the episode's data), `state`
            any pytree of arrays.
        step: `step(theta, state, t) -> (state, loss)` advances one step: `t` is the int32
            index of the step inside the episode, $0 \le t < T$; the new state must keep the
            structure, shapes and dtypes of `init`'s, and `loss` is a real float scalar
            $\ell_t$.
        horizon: $T$, the episode length (a positive Python int). After $T$ steps an
            episode is over and the next step starts a new one from `init`.
        episode: optional (default `None`): the parallel form
            `episode(theta, key) -> losses [horizon]`, the same per-step losses as stepping
            the episode that `init(theta, key)` starts, computed in parallel over time (e.g.
            by `unroll.parallel.linear_recurrence`). Only estimators that need it
            (`parallel_bptt`) read it; a system without it is unchanged everywhere.
        jacobian: optional (default `None`): the step's Jacobian by the state, structured,
            `jacobian(theta, state, t) -> unroll.StepJacobian` of `step(theta, state, t)[0]`
            (its diagonal, plus a low-rank part; or `None`: nothing declared), at about the
            cost of one step. Newton over time (`parallel_bptt(solver=...)`,
            `unroll.parallel.solve_episode`) uses it instead of $N$ jvps per step; a
            system without it is unchanged everywhere.
    """

    init: Callable[[PyTree, jax.Array], PyTree]
    step: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array]]
    horizon: int
    episode: Callable[[PyTree, jax.Array], jax.Array] | None = None
    jacobian: Callable[[PyTree, PyTree, jax.Array], Any] | None = None


def check_system(system: Any, name: str = "system") -> None:
    """Checks the parts of a system that can be checked without theta (construction time)."""
    for attr in ("init", "step", "horizon"):
        if not hasattr(system, attr):
            raise BadType(
                f"`{name}` has no attribute `{attr}` (got {type(system).__name__}); "
                "build it with unroll.System(init=..., step=..., horizon=...)."
            )
    for attr in ("init", "step"):
        if not callable(getattr(system, attr)):
            raise BadType(
                f"`{name}.{attr}` must be a function, got {type(getattr(system, attr)).__name__}; "
                f"pass a pure function as unroll.System({attr}=...)."
            )
    horizon = system.horizon
    if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon < 1:
        raise BadValue(
            f"`{name}.horizon` must be a positive Python int (the episode length), got {horizon!r}; "
            "pass e.g. unroll.System(..., horizon=100)."
        )


def check_positive_int(value: Any, name: str, fix: str = "") -> int:
    """Returns ``value`` as an int if it is a positive integer, else raises naming ``name``,
    the value and ``fix`` (by default: what a valid value looks like): ``TypeError`` when
    ``value`` is not an integer (a float, bool, string, None, an array), ``ValueError`` when
    it is an integer below 1."""
    fix = fix or "Pass an int >= 1 (a Python or numpy integer, not a float, bool or string)."
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BadType(f"`{name}` must be a positive int, got {value!r}. {fix}")
    if value < 1:
        raise BadValue(f"`{name}` must be a positive int, got {value!r}. {fix}")
    return int(value)


def check_positive_float(value: Any, name: str, fix: str) -> float:
    """Returns ``value`` as a float if it is a positive finite real number, else raises
    naming ``name``, the value and ``fix`` (e.g. ``"try sigma=0.1."``)."""
    try:
        if isinstance(value, (bool, str, bytes)) or value is None:
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        raise BadType(f"`{name}` must be a positive float, got {value!r}; {fix}") from None
    if not 0 < number < float("inf"):
        raise BadValue(f"`{name}` must be a positive finite float, got {value!r}; {fix}")
    return number


def check_truncation(truncation: Any, horizon: int) -> int:
    """A window length ``1 <= truncation <= horizon``."""
    truncation = check_positive_int(
        truncation, "truncation", "It is the number of steps per window: use 1 <= truncation <= horizon."
    )
    if truncation > horizon:
        raise BadValue(
            f"`truncation`={truncation} is longer than the episode (`horizon`={horizon}); "
            f"use truncation <= {horizon}, or full_bptt / es for whole episodes."
        )
    return truncation


def check_num_workers(num_workers: Any) -> int:
    """The number of workers (independent, staggered trajectories) an estimator runs."""
    return check_positive_int(
        num_workers,
        "num_workers",
        "It counts the trajectories each window runs (staggered over the horizon): use 1 or more, e.g. num_workers=8.",
    )


def check_sigma(sigma: Any) -> float:
    """The standard deviation of ES perturbations: a positive finite float."""
    return check_positive_float(sigma, "sigma", "it is the ES perturbation scale: try sigma=0.1.")


def check_particles(num_particles: Any, antithetic: Any, name: str = "num_particles") -> int:
    """A particle count; even when particles come in antithetic pairs."""
    if not isinstance(antithetic, (bool, np.bool_)):
        raise BadType(
            f"`antithetic` must be True or False, got {antithetic!r}; True draws the particles in pairs (+eps, -eps)."
        )
    num_particles = check_positive_int(
        num_particles,
        name,
        f"It counts the perturbed copies per worker: use an {'even ' if antithetic else ''}int"
        f" >= {2 if antithetic else 1}, e.g. {name}=64.",
    )
    if antithetic and num_particles % 2:
        raise BadValue(
            f"`{name}`={num_particles} is odd but `antithetic=True` uses pairs (+eps, -eps); "
            f"use an even number such as {num_particles + 1}, or antithetic=False."
        )
    return num_particles


_BYTE_UNITS = {"B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_BYTE_UNITS |= {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_BUDGET_FIX = (
    "It counts the hidden states kept at once, the episode's initial state included, so the feasible minimum "
    "is 1 (e.g. memory_budget=10); or it is the bytes for those states, a string such as memory_budget='64MiB'. "
    "Use full_bptt to store every state."
)


class MemoryBytes(NamedTuple):
    """A memory budget in bytes: ``text`` as given (``"64MiB"``), ``size`` in bytes."""

    text: str
    size: int


def check_memory_budget(memory_budget: Any, *, allow_bytes: bool = True) -> int | MemoryBytes:
    """A number of stored state slots, a positive int (1, the initial state alone, is the
    feasible minimum); or, with ``allow_bytes``, a size in bytes as a string: a number and
    a unit, one of B, kB (1000 B), MB, GB, TB, KiB (1024 B), MiB, GiB, TiB."""
    if isinstance(memory_budget, MemoryBytes) and allow_bytes:
        return memory_budget
    if isinstance(memory_budget, str) and allow_bytes:
        match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([A-Za-z]+)\s*", memory_budget)
        if not match or match.group(2) not in _BYTE_UNITS:
            raise BadValue(
                f"`memory_budget`={memory_budget!r} is not a size in bytes: write a number and a unit, one of "
                f"{', '.join(_BYTE_UNITS)} (e.g. memory_budget='64MiB'), or pass a count of states as an int "
                "(e.g. memory_budget=10)."
            )
        size = int(float(match.group(1)) * _BYTE_UNITS[match.group(2)])
        if size < 1:
            raise BadValue(f"`memory_budget`={memory_budget!r} is less than one byte. {_BUDGET_FIX}")
        return MemoryBytes(memory_budget, size)
    fix = _BUDGET_FIX
    if isinstance(memory_budget, str):
        fix = (
            "`plan` counts states (the feasible minimum is 1, e.g. memory_budget=10); checkpointed_bptt takes bytes "
            "such as '64MiB' and converts them with the state's size: unroll.checkpointing.budget_slots(memory_budget, "
            "state) gives the count."
        )
    return check_positive_int(memory_budget, "memory_budget", fix)


def check_real_state(estimator: str, leaves: list) -> None:
    """Estimators whose approximation lives on a real state vector (``uoro``, ``dni``)."""
    if any(jnp.iscomplexobj(x) for x in leaves):
        raise BadType(
            f"`{estimator}` needs a real state; this system's state has complex leaves: use rtrl instead "
            "(or carry the real and imaginary parts as two float leaves)."
        )


def _path_str(path) -> str:
    return "theta" + jax.tree_util.keystr(path) if path else "theta"


def _library(obj) -> str | None:
    """``"equinox"`` or ``"flax"`` if ``obj`` is one of those libraries' objects (a module, an nnx State)."""
    for cls in type(obj).__mro__:
        root = cls.__module__.split(".")[0]
        if root in ("equinox", "flax"):
            return root
    return None


_LIBRARY_FIX = {
    "equinox": "pass only the module's arrays as theta: `params, static = eqx.partition(model, eqx.is_inexact_array)`, "
    "and rebuild it inside init/step with `model = eqx.combine(params, static)` (close over `static`)",
    "flax": "pass only the parameters as theta: `graphdef, params, rest = nnx.split(model, nnx.Param, ...)`, and "
    "rebuild it inside init/step with `model = nnx.merge(graphdef, params, rest)` (close over `graphdef` and `rest`)",
}


def _library_fix(theta: PyTree, path) -> str | None:
    """The fix for a bad leaf at ``path`` inside an equinox or flax object of ``theta`` (None: not inside one)."""
    found = jax.tree_util.tree_flatten_with_path(theta, is_leaf=lambda x: _library(x) is not None)[0]
    for prefix, obj in found:
        library = _library(obj)
        if library is not None and tuple(path[: len(prefix)]) == tuple(prefix):
            article = "an" if library == "equinox" else "a"
            return f"`{_path_str(prefix)}` is {article} {library} {type(obj).__name__}; {_LIBRARY_FIX[library]}"
    return None


def check_theta(theta: PyTree) -> None:
    """Every leaf of theta must be a real floating-point array (or Python float).

    A leaf inside an equinox module or flax object that is not one (an activation
    function, an rng count or key) is refused with that library's way of splitting the
    parameters out (``eqx.partition``, ``nnx.split``).
    """
    leaves = jax.tree_util.tree_leaves_with_path(theta)
    if not leaves:
        raise BadValue(
            f"`theta`={theta!r} has no array leaves; pass the outer parameters as a pytree of float arrays, "
            "e.g. {'w': jnp.zeros(3)}."
        )
    for path, leaf in leaves:
        python_int = isinstance(leaf, (bool, int)) and not isinstance(leaf, float)
        not_array = not hasattr(leaf, "dtype") and not isinstance(leaf, float)
        if not (python_int or not_array or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating)):
            continue  # a float leaf
        library = _library_fix(theta, path)  # only for a bad leaf: it walks theta
        if python_int:
            raise BadType(
                f"`{_path_str(path)}` is a Python {type(leaf).__name__} ({leaf!r}), not a float; theta leaves must be "
                + (
                    f"float arrays: {library}."
                    if library
                    else f"float arrays: write {float(leaf)!r} or jnp.asarray({leaf!r}, jnp.float32)."
                )
            )
        if not_array:
            kind = "function" if callable(leaf) else type(leaf).__name__
            fix = library or (
                "a function is not a parameter: close over it in init/step instead"
                if callable(leaf)
                else "theta must be a pytree of float arrays, e.g. jnp.asarray(x, jnp.float32)"
            )
            raise BadType(f"`{_path_str(path)}` is a {kind} ({leaf!r:.40}), not a float array; {fix}.")
        dtype = jnp.result_type(leaf)  # a non-float dtype
        if library:
            fix = library
        elif jnp.issubdtype(dtype, jnp.complexfloating):
            fix = "split it into two real leaves (jnp.real, jnp.imag): gradients are taken on real parameters"
        elif jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            fix = "a PRNG key is not a parameter: keep it out of theta and draw randomness from the key init/step get"
        else:
            fix = (
                "convert it with jnp.asarray(x, jnp.float32) (or float64), or keep integer constants "
                "out of theta (close over them in init/step)"
            )
        raise BadType(f"`{_path_str(path)}` has dtype {dtype}, but theta leaves must be real float arrays; {fix}.")


def check_against_theta(system: Any, theta: PyTree, key: jax.Array) -> None:
    """Trace-time checks of ``init`` and ``step`` on the given theta (no FLOPs spent).

    Raises if ``init`` returns something other than arrays, if ``step`` changes the
    state's structure, shapes or dtypes, or returns a loss that is not a float scalar. An
    exception raised inside ``init`` or ``step`` themselves (a shape bug, a Python ``if`` on
    a traced value) is re-raised as it is, with the user's line in its traceback and a note
    saying what they were traced on.
    """
    check_theta(theta)
    state = _traced(system.init, "system.init(theta, key)", "theta and key", (theta, key), _check_init_output)
    t = jax.ShapeDtypeStruct((), jnp.int32)
    on = f"the state system.init returns ({_shapes(state)}) and a traced int32 t"
    out = _traced(system.step, "system.step(theta, state, t)", on, (theta, state, t), lambda out: out)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise BadType(
            "`system.step` must return a pair (state, loss), got "
            f"{type(out).__name__}{f' of length {len(out)}' if isinstance(out, (tuple, list)) else ''}; "
            "return `new_state, loss`."
        )
    new_state, loss = out
    if jax.tree_util.tree_structure(new_state) != jax.tree_util.tree_structure(state):
        raise BadType(
            "`system.step` returned a state whose pytree structure differs from `system.init`'s: "
            f"{jax.tree_util.tree_structure(new_state)} vs {jax.tree_util.tree_structure(state)}; "
            "return the same structure every step."
        )
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state), jax.tree_util.tree_leaves(new_state)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise BadType(
                f"`system.step` changed state{jax.tree_util.keystr(path)} from {a.dtype}{list(a.shape)} "
                f"to {b.dtype}{list(b.shape)}; each state leaf must keep its shape and dtype "
                "(cast with .astype and check broadcasting)."
            )
    shape = getattr(loss, "shape", None)
    dtype = getattr(loss, "dtype", None)
    if shape != () or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        desc = f"{dtype}{list(shape)}" if dtype is not None else type(loss).__name__
        if shape != ():
            fix = "reduce it to a scalar with .mean() or .sum()"
        elif jnp.issubdtype(dtype, jnp.complexfloating):
            fix = "return a real loss, e.g. jnp.abs(z) ** 2 or jnp.real(z)"
        else:
            fix = "make it floating point, e.g. loss.astype(jnp.float32) (an integer loss has no gradient)"
        raise BadType(f"`system.step` must return a float scalar loss, got {desc}; {fix}.")


def _traced(fn: Callable, call: str, inputs: str, args: tuple, check_output: Callable):
    """``jax.eval_shape(fn, *args)`` with ``check_output`` applied to ``fn``'s output inside the trace.
    An exception raised in ``fn`` (the user's code) propagates as it is, traceback and all, with a
    note saying what unroll traced it on; nothing blames an input that did not cause it."""
    try:
        return jax.eval_shape(lambda *a: check_output(fn(*a)), *args)
    except _OutputError as err:
        raise BadType(str(err)) from None
    except Exception as err:
        err.add_note(f"(raised while unroll traced `{call}` on {inputs}, before running anything)")
        raise


class _OutputError(BadType):
    """What a system function returned is not a pytree of arrays (raised inside the trace)."""


def _check_init_output(state):
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, numbers.Number)):
            raise _OutputError(
                f"`system.init(theta, key)` cannot be traced on this theta: it returned a {type(leaf).__name__} at "
                f"state{jax.tree_util.keystr(path)}; it must return a pytree of arrays computed with jax from theta "
                "and key (jit-able)."
            )
    return state


def _shapes(state) -> str:
    """``"['h']: float32[3], ['key']: key<fry>[]"``: a state's leaves, for messages."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    return ", ".join(f"state{jax.tree_util.keystr(p)}: {leaf.dtype}{list(leaf.shape)}" for p, leaf in leaves) or "empty"


def is_inexact(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def inexact_leaves(state) -> list:
    """The float/complex leaves of a state, the ones that carry tangents (keys, counters do not)."""
    return [x for x in jax.tree_util.tree_leaves(state) if is_inexact(x)]


def with_inexact_leaves(state, values: list):
    """``state`` with its inexact leaves replaced, in order, by ``values``."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    values = iter(values)
    return jax.tree_util.tree_unflatten(treedef, [next(values) if is_inexact(x) else x for x in leaves])


def real_parts(leaves: list) -> list:
    """Complex leaves as stacked (real, imaginary) parts: the influence lives on the real
    view of the state, so non-holomorphic steps are differentiated correctly."""
    return [jnp.stack([jnp.real(x), jnp.imag(x)]) if jnp.iscomplexobj(x) else x for x in leaves]


def from_real_parts(parts: list, template: list) -> list:
    return [p[0] + 1j * p[1] if jnp.iscomplexobj(x) else p for p, x in zip(parts, template)]


def real_view(system, state):
    """``(vector, f)``: the state's inexact leaves as one real vector ``[N]``, and
    ``f(theta, vector, t) -> (next vector, loss, next state)``, the step on that view."""
    template = inexact_leaves(state)
    vector, unravel = ravel_pytree(real_parts(template))

    def f(theta, vector, t):
        new_state, loss = system.step(theta, with_inexact_leaves(state, from_real_parts(unravel(vector), template)), t)
        return ravel_pytree(real_parts(inexact_leaves(new_state)))[0], loss, new_state

    return vector, f


def check_parallel_form(system: Any, estimator: str) -> None:
    """Construction-time check that ``system`` has a parallel form ``episode``."""
    episode = getattr(system, "episode", None)
    if episode is None:
        raise BadValue(
            f"`{estimator}` needs the system's parallel form `system.episode(theta, key) -> losses [horizon]`, "
            "and this system has none (episode=None). Give it one, unroll.System(init, step, horizon, "
            "episode=...) (e.g. with unroll.parallel.linear_recurrence; the tasks' gilr, gilr-lstm and lru cells "
            "have one), or use full_bptt or checkpointed_bptt for the same gradient step by step."
        )
    if not callable(episode):
        raise BadType(
            f"`system.episode` must be a function episode(theta, key) -> losses [horizon], got "
            f"{type(episode).__name__}; pass a pure function as unroll.System(..., episode=...)."
        )


def check_episode_against_theta(system: Any, theta: PyTree, key: jax.Array) -> None:
    """Trace-time check that ``system.episode(theta, key)`` returns ``[horizon]`` real float losses
    (an exception inside ``episode`` itself is re-raised as it is, with a note)."""
    losses = _traced(system.episode, "system.episode(theta, key)", "theta and key", (theta, key), lambda out: out)
    shape, dtype = getattr(losses, "shape", None), getattr(losses, "dtype", None)
    if shape != (system.horizon,) or dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        desc = f"{dtype}{list(shape)}" if dtype is not None else type(losses).__name__
        raise BadType(
            f"`system.episode` must return the episode's per-step losses, a real float array of shape "
            f"[horizon] = [{system.horizon}], got {desc}; return one loss per step (the same as `step`'s), "
            "not their mean."
        )


class StateSplit(NamedTuple):
    """A state's leaves in two lists, in order: the ``floats`` (float and complex: the ones
    that carry tangents) and the ``discrete`` others (ints, PRNG keys), with
    ``merge(floats, discrete) -> state`` putting such lists back into its structure."""

    floats: list
    discrete: list
    merge: Callable[[list, list], PyTree]


def split_discrete(state: PyTree) -> StateSplit:
    """``state`` split into its float and its discrete leaves (``StateSplit``)."""
    leaves, treedef = jax.tree_util.tree_flatten(state)
    is_float = [is_inexact(x) for x in leaves]

    def merge(floats, discrete):
        floats, discrete = iter(floats), iter(discrete)
        return treedef.unflatten([next(floats) if f else next(discrete) for f in is_float])

    return StateSplit([x for x, f in zip(leaves, is_float) if f], [x for x, f in zip(leaves, is_float) if not f], merge)


def check_discrete_independent(system: Any, theta: PyTree, key: jax.Array, estimator: str) -> None:
    """Trace-time check that the state's int and key leaves after ``step`` do not depend on
    its float leaves before it (so solvers that iterate on the floats can compute the
    discrete leaves once); found by dead-code elimination of the step's jaxpr."""
    check_against_theta(system, theta, key)
    state = jax.eval_shape(system.init, theta, key)
    split = split_discrete(state)
    if not split.discrete:
        return

    def discrete_after(floats, discrete, t):
        return split_discrete(system.step(theta, split.merge(floats, discrete), t)[0]).discrete

    closed = jax.make_jaxpr(discrete_after)(split.floats, split.discrete, jax.ShapeDtypeStruct((), jnp.int32))
    used = used_inputs(closed)
    float_paths = [path for path, x in jax.tree_util.tree_leaves_with_path(state) if is_inexact(x)]
    read = [jax.tree_util.keystr(path) or "(the state)" for path, u in zip(float_paths, used) if u]
    if read:
        raise BadValue(
            f"`{estimator}` iterates on the state's float leaves and computes its int and key leaves once, "
            f"so those must not depend on the floats; but this system's `step` computes its discrete leaves "
            f"from the float leaves state{', state'.join(read)}. Make the discrete leaves a function of "
            "themselves and `t` only (e.g. keep a float-dependent branch index as a float), or use "
            "full_bptt or checkpointed_bptt, which step the state sequentially."
        )
