r"""Estimators over several devices and hosts: the trajectory axes of the state split by a mesh.

Every windowed estimator holds its trajectories with leading axes $[W, P]$
(workers $\times$ particles; `unroll.contract.Worker.t` has exactly that shape) and runs a
window as one `vmap` over them inside a `lax.scan`. `shard` pins those axes to a
`jax.sharding.Mesh` with `jax.lax.with_sharding_constraint` on the state entering
and leaving `init` and `estimate`; under `jax.jit` XLA's SPMD partitioner (GSPMD)
then runs each device's block of trajectories through the whole window and turns the
means over $[W, P]$ ($g = \frac{1}{W P K} \sum_{w,p,k} \dots$, the loss) into all-reduces.
The steps themselves need no communication (the reset schedule of a window is found
before its scan, the engine's `reset_schedule`). Same keys, same estimates, up to the
summation order of the means. Splitting particles (`PartitionSpec(None, "d")`) also
gathers each window's antithetic noise ($[W, P, |\theta|]$, once per window). The
reverse-mode estimators (`truncated_bptt`, `full_bptt`, `dni`) are the exception:
their backward scan sums theta's cotangent over the trajectories at every step, which
the partitioner makes an all-reduce of $|\theta|$ per step.

Multi-host: every process calls `jax.distributed.initialize(...)` first, then runs the
same program: the mesh over `jax.devices()` (all processes' devices), the same
`theta` and keys (host values; `replicated` for arrays committed to one device).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from unroll._errors import BadType, BadValue
from unroll._tree import PyTree
from unroll.contract import Estimate, Estimator, Worker

__all__ = ["AXES", "auto_mesh", "replicated", "shard", "state_shardings", "trajectory_shapes"]


AXES = ("workers", "particles")


def _mesh_axes(entry) -> tuple:
    """The mesh axis names one entry of a ``PartitionSpec`` names (none, one or a tuple)."""
    if entry is None:
        return ()
    return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def auto_mesh(mesh: Any) -> Mesh:
    """`mesh` with every axis `AxisType.Auto` (`jax.make_mesh` makes Explicit ones).

    The sharding constraints of `shard` then leave the layout of intermediates to the
    partitioner.

    Args:
        mesh: a `jax.sharding.Mesh`, of any axis types.

    Returns:
        A `Mesh` over the same devices and axis names, every axis `AxisType.Auto`.

    Raises:
        TypeError: `mesh` is not a `jax.sharding.Mesh`.
    """
    if not isinstance(mesh, Mesh):
        raise BadType(
            f"`mesh` must be a jax.sharding.Mesh, got {type(mesh).__name__}; build one with "
            "jax.make_mesh((jax.device_count(),), ('d',)) or Mesh(np.array(jax.devices()), ('d',))."
        )
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _check_spec(mesh: Mesh, spec: Any) -> PartitionSpec:
    if spec is None:
        return PartitionSpec(mesh.axis_names[0])
    if not isinstance(spec, PartitionSpec):
        raise BadType(
            f"`spec` must be a jax.sharding.PartitionSpec over the [workers, particles] axes, got {spec!r}; "
            f"pass e.g. PartitionSpec({mesh.axis_names[0]!r}) (workers) or PartitionSpec(None, "
            f"{mesh.axis_names[0]!r}) (particles)."
        )
    if len(spec) > 2:
        raise BadValue(
            f"`spec`={spec} has {len(spec)} entries; only the leading [workers, particles] axes of the "
            "trajectories are sharded, so pass at most two, e.g. PartitionSpec('workers', 'particles')."
        )
    names = [name for entry in spec for name in _mesh_axes(entry)]
    for name in names:
        if name not in mesh.axis_names:
            raise BadValue(
                f"`spec`={spec} names the mesh axis {name!r}, but the mesh has axes {tuple(mesh.axis_names)}; "
                "use one of those names or build the mesh with that axis."
            )
    if len(set(names)) < len(names):
        raise BadValue(
            f"`spec`={spec} uses a mesh axis twice; a mesh axis can split one of [workers, particles] only, "
            "e.g. PartitionSpec('a', 'b') on a 2-D mesh ('a', 'b')."
        )
    return spec


def trajectory_shapes(state: PyTree) -> tuple[tuple[int, ...], ...]:
    """The distinct $[W, P]$ shapes of the `Worker` nodes inside an estimator state.

    Args:
        state: an estimator state (e.g. a `WindowState`), arrays or `jax.ShapeDtypeStruct`s.

    Returns:
        A tuple of the distinct shapes (tuples of ints) of the `Worker` nodes' `t`, in the
        order found; empty for a state with no `Worker`.
    """
    nodes = jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, Worker))
    shapes = [tuple(np.shape(node.t)) for node in nodes if isinstance(node, Worker)]
    return tuple(dict.fromkeys(shapes))


def _check_divisible(shapes, mesh: Mesh, spec: PartitionSpec) -> None:
    for shape in shapes:
        for axis, (entry, size) in enumerate(zip(spec, shape)):
            names = _mesh_axes(entry)
            parts = math.prod(mesh.shape[name] for name in names)
            if size % parts:
                other = PartitionSpec(None, names[0]) if axis == 0 else PartitionSpec(names[0])
                raise BadValue(
                    f"`spec`={spec} splits the {AXES[axis]} axis of the estimator state (size {size}, state "
                    f"trajectories {shape} = [workers, particles]) over {parts} devices (mesh axes {names}), "
                    f"which does not divide it; make num_{AXES[axis]} a multiple of {parts}, or shard the other "
                    f"axis (spec={other})."
                )


def state_shardings(state: PyTree, mesh: Mesh, spec: PartitionSpec | None = None) -> PyTree:
    """The `NamedSharding` of every leaf of an estimator `state`.

    `NamedSharding(mesh, spec)` for the leaves whose leading dims are the $[W, P]$ of a
    `Worker` inside it (system states, times, keys, accumulators: the trajectories),
    replicated (`PartitionSpec()`) for the others (e.g. DNI's synthesizer and its optimizer
    state). A state with no `Worker` is replicated.

    Args:
        state: an estimator state, arrays or `jax.ShapeDtypeStruct`s.
        mesh: a `jax.sharding.Mesh` (its axes are used as `AxisType.Auto`, `auto_mesh`).
        spec: a `PartitionSpec` over `[workers, particles]`, as in `shard`; default `None`:
            `PartitionSpec(mesh.axis_names[0])`, workers over the mesh's first axis.

    Returns:
        A pytree of `NamedSharding`s with the structure of `state`.

    Raises:
        TypeError: `mesh` is not a `Mesh` or `spec` not a `PartitionSpec`.
        ValueError: `spec` has more than two entries, names an axis the mesh lacks or one
            twice, or a split axis is not a multiple of the devices it is split over.
    """
    mesh = auto_mesh(mesh)
    spec = _check_spec(mesh, spec)
    shapes = trajectory_shapes(state)
    _check_divisible(shapes, mesh, spec)
    split, whole = NamedSharding(mesh, spec), NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: split if tuple(np.shape(x)[:2]) in shapes else whole, state)


def _constrain(tree: PyTree, shardings: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jax.lax.with_sharding_constraint, tree, shardings)


def _replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    whole = NamedSharding(mesh, PartitionSpec())
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, whole), tree)


def shard(estimator: Estimator, mesh: Mesh, spec: PartitionSpec | None = None) -> Estimator:
    r"""The same estimator with its trajectories split over `mesh`.

    Inside `init` and `estimate` (on the incoming and the returned state) every state leaf
    whose leading dims are the $[W, P]$ trajectory shape of a `Worker` in the state gets
    `NamedSharding(mesh, spec)`; every other leaf, theta, the key, the gradient and `info`
    are replicated. Under `jax.jit` the window's vmapped scan then runs $W P / D$
    trajectories on each of the $D$ devices and the gradient
    $g = \frac{1}{W P K} \sum_{w,p,k} \dots$ ends in one all-reduce; the estimates equal the
    unsharded estimator's (same keys) up to the order of that sum.

    A state with no `Worker` (a custom estimator) is replicated: correct, no speedup.
    `checkpointed_bptt` has one trajectory, so there is nothing to split. `jax.make_mesh`'s
    Explicit axes are used as Auto ones (the partitioner lays out the intermediates).
    Use the returned functions under `jax.jit` (as `unroll.train` does). With several
    processes (`jax.distributed`), pass `theta` and keys that are the same in every
    process: host values as they are, arrays committed to one device through
    `replicated(tree, mesh)`.

    Args:
        estimator: any `unroll` estimator (`pes`, `rtrl`, `dni`, `es`, ...).
        mesh: a `jax.sharding.Mesh`; with `jax.distributed` it may span processes.
        spec: a `PartitionSpec` over `[workers, particles]`: default `None`, i.e.
            `PartitionSpec(mesh.axis_names[0])` (workers over the mesh's first axis);
            `PartitionSpec(None, "d")` splits particles (`pes`/`es` with one worker),
            `PartitionSpec("a", "b")` both. Each split axis must be a multiple of the
            number of devices it is split over (checked at trace time).

    Returns:
        An `Estimator` (`unroll.contract.Estimator`) with the same state and estimates as
        `estimator`, its trajectory leaves sharded over `mesh`.

    Raises:
        TypeError: `mesh` is not a `Mesh` or `spec` not a `PartitionSpec`.
        ValueError: `spec` has more than two entries, or names an axis the mesh lacks or one
            axis twice; at trace time, a split axis that is not a multiple of its devices.
    """
    mesh = auto_mesh(mesh)
    spec = _check_spec(mesh, spec)

    def init(theta, key):
        theta, key = _replicate((theta, key), mesh)
        state = estimator.init(theta, key)
        return _constrain(state, state_shardings(state, mesh, spec))

    def estimate(theta, state, key):
        shardings = state_shardings(state, mesh, spec)  # the state keeps its structure and shapes
        theta, key = _replicate((theta, key), mesh)
        grad, state, info = estimator.estimate(theta, _constrain(state, shardings), key)
        return Estimate(_replicate(grad, mesh), _constrain(state, shardings), _replicate(info, mesh))

    return Estimator(init, estimate)


def replicated(tree: PyTree, mesh: Mesh) -> PyTree:
    """`tree` as global arrays replicated on every device of `mesh` (across processes too).

    Built from each process's own copy, which must hold the same values. Needed for
    inputs of a jitted sharded estimator that are committed to one device (made by
    `jax.device_put(x, device)`): jit refuses to mix them with the mesh. Host values
    (numpy, Python, `jnp` arrays not put on a device) need nothing.

    Args:
        tree: a pytree of arrays (typed PRNG keys included), the same in every process.
        mesh: the `jax.sharding.Mesh` to replicate over.

    Returns:
        `tree` with every leaf a global `jax.Array` replicated over `mesh`
        (`NamedSharding(mesh, PartitionSpec())`).

    Raises:
        TypeError: `mesh` is not a `jax.sharding.Mesh`.
    """
    whole = NamedSharding(auto_mesh(mesh), PartitionSpec())

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        value = np.asarray(x)
        return jax.make_array_from_callback(value.shape, whole, lambda index: value[index])

    return jax.tree_util.tree_map(put, tree)
