"""Subprocess half of ``tests/test_sharding.py``: runs sharded estimators on forced host
devices and prints one ``RESULT <json>`` line for the test to assert on.

The pytest process has one CPU device and an initialized backend, so device counts
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) and ``jax.distributed`` need a
fresh process. Modes:

* ``single``: 8 devices; for every estimator, several jitted ``estimate`` windows of
  ``shard(est, mesh, spec)`` against ``est`` (same keys), how the state is placed, and
  one ``unroll.train`` run each way; plus the trace-time error for an axis the mesh
  does not divide.
* ``multihost PROCESS_ID NUM_PROCESSES PORT``: one process of a ``jax.distributed``
  job on localhost; every process runs the same sharded pes over the global mesh.
* ``reference``: that pes, unsharded, in one process alone.
"""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

import unroll
from tests.stochastic import THETA, linear_quadratic
from tests.systems import ESTIMATOR_NAMES, sharding_case
from unroll.sharding import shard

WINDOWS = 3


def leaves(tree) -> list[np.ndarray]:
    """Host copies of every leaf, typed PRNG keys as their raw data."""
    out = []
    for x in jax.tree_util.tree_leaves(tree):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x))
    return out


def run_windows(est, theta, key, windows: int = WINDOWS):
    """``init`` then ``windows`` jitted ``estimate`` calls; returns the grads and losses (host
    copies), the final state and the last gradient (device arrays), and the jitted ``estimate``."""
    init_key, run_key = jax.random.split(key)
    state = jax.jit(est.init)(theta, init_key)
    estimate = jax.jit(est.estimate)
    grads, losses = [], []
    for window in range(windows):
        grad, state, info = estimate(theta, state, jax.random.fold_in(run_key, window))
        grads.append(leaves(grad))
        losses.append(float(info["loss"]))
    return grads, losses, state, grad, estimate


def max_rel_diff(a: list, b: list) -> float:
    """``max |a - b| / max(|b|, 1e-300)`` over lists of equally shaped float arrays."""
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-300), initial=0.0)))
    return worst


def placement(state, num_devices: int) -> dict:
    """How the state's leaves sit on the devices: the Worker's ``t`` and the count of
    sharded / replicated leaves."""
    t = state.workers.t
    all_leaves = jax.tree_util.tree_leaves(state)
    split = [x for x in all_leaves if not x.sharding.is_fully_replicated]
    worker_leaves = jax.tree_util.tree_leaves(state.workers)
    return {
        "t_devices": len(t.sharding.device_set),
        "t_replicated": bool(t.sharding.is_fully_replicated),
        "t_shard_shape": list(t.sharding.shard_shape(t.shape)),
        "t_shape": list(t.shape),
        "worker_leaves_all_split": all(not x.sharding.is_fully_replicated for x in worker_leaves),
        "on_all_devices": all(len(x.sharding.device_set) == num_devices for x in all_leaves),
        "num_split": len(split),
        "num_replicated": len(all_leaves) - len(split),
    }


COLLECTIVES = ("all-reduce(", "all-gather(", "all-to-all(", "collective-permute(", "reduce-scatter(")


def loop_collectives(hlo: str) -> int:
    """Collectives inside ``while`` loops (the window's scan, any loop it runs) of compiled
    HLO text: the computations named by ``body=`` and all they call, transitively."""
    computations = {}
    for block in hlo.split("\n\n"):
        head = block.strip().split(" ", 2)
        if head and head[0]:
            name = head[1] if head[0] == "ENTRY" else head[0]
            computations[name] = block
    names = re.findall(r"body=(%[\w.\-]+)", hlo)
    seen = set()
    while names:
        name = names.pop()
        if name in seen or name not in computations:
            continue
        seen.add(name)
        names += [n for n in re.findall(r"%[\w.\-]+", computations[name]) if n in computations]
    return sum(computations[name].count(op) for name in seen for op in COLLECTIVES)


def compare(est, theta, key, mesh, spec=None) -> dict:
    """The sharded estimator against the plain one: windows, state placement, collectives."""
    grads, losses, state, _, _ = run_windows(est, theta, key)
    sharded = shard(est, mesh, spec)
    s_grads, s_losses, s_state, s_grad, s_estimate = run_windows(sharded, theta, key)
    compiled = s_estimate.lower(theta, s_state, key).compile().as_text()  # the program that ran (its trace reused)
    state_diff = max_rel_diff(
        [x for x in leaves(s_state) if x.dtype.kind in "fc"], [x for x in leaves(state) if x.dtype.kind in "fc"]
    )
    exact = [x for x in leaves(state) if x.dtype.kind not in "fc"]
    return {
        "grad_rel_diff": max_rel_diff([g for w in s_grads for g in w], [g for w in grads for g in w]),
        "loss_rel_diff": max_rel_diff(s_losses, losses),
        "state_rel_diff": state_diff,
        "state_ints_equal": all(
            np.array_equal(a, b) for a, b in zip([x for x in leaves(s_state) if x.dtype.kind not in "fc"], exact)
        ),
        "grad_replicated": all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(s_grad)),
        "all_reduces": compiled.count("all-reduce("),
        "all_gathers": compiled.count("all-gather("),
        "loop_collectives": loop_collectives(compiled),
        **placement(s_state, mesh.size),
    }


def single() -> dict:
    mesh = jax.make_mesh((8,), ("d",))
    lq, lq_theta = linear_quadratic(7), jnp.asarray(THETA)
    key = jax.random.key(0)
    # every registered estimator (tests.systems.sharding_case), plus two other layouts of pes
    cases = {name: (*sharding_case(name), None) for name in ESTIMATOR_NAMES}
    cases["pes_particles"] = (unroll.pes(lq, truncation=3, sigma=0.1, num_particles=16), lq_theta, P(None, "d"))
    results = {name: compare(est, theta, key, mesh, spec) for name, (est, theta, spec) in cases.items()}

    mesh_2d = jax.make_mesh((4, 2), ("w", "p"))
    pes_2d = unroll.pes(lq, truncation=3, sigma=0.1, num_particles=4, num_workers=4)
    results["pes_2d_mesh"] = compare(pes_2d, lq_theta, key, mesh_2d, P("w", "p"))

    est = unroll.pes(lq, truncation=3, sigma=0.1, num_particles=2, num_workers=8)
    runs = [unroll.train(e, optax.sgd(0.01), lq_theta, key, 4, progress=False) for e in (est, shard(est, mesh))]
    (theta, history), (s_theta, s_history) = runs
    results["train"] = {
        "theta_rel_diff": max_rel_diff([s_theta], [theta]),
        "loss_rel_diff": max_rel_diff([s_history["loss"]], [history["loss"]]),
        "theta_replicated": bool(s_theta.sharding.is_fully_replicated),
    }

    try:
        odd = shard(unroll.pes(lq, truncation=3, sigma=0.1, num_particles=2, num_workers=3), mesh)
        jax.jit(odd.init)(lq_theta, key)
        results["indivisible_error"] = None
    except ValueError as error:
        results["indivisible_error"] = str(error)
    return results


def multihost_estimator():
    return unroll.pes(linear_quadratic(7), truncation=3, sigma=0.1, num_particles=2, num_workers=8)


def multihost(process_id: int, num_processes: int, port: int) -> dict:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=120,
    )
    mesh = jax.make_mesh((jax.device_count(),), ("d",))
    grads, losses, state, _, _ = run_windows(shard(multihost_estimator(), mesh), jnp.asarray(THETA), jax.random.key(0))
    t = state.workers.t
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "collectives": str(jax.config.jax_cpu_collectives_implementation),
        "grads": [g[0].tolist() for g in grads],
        "losses": losses,
        "t_devices": len(t.sharding.device_set),
        "t_fully_addressable": bool(t.is_fully_addressable),
        "t_local_shards": len(t.addressable_shards),
    }


def reference() -> dict:
    grads, losses, _, _, _ = run_windows(multihost_estimator(), jnp.asarray(THETA), jax.random.key(0))
    return {"grads": [g[0].tolist() for g in grads], "losses": losses, "device_count": jax.device_count()}


def main(argv: list[str]) -> None:
    jax.config.update("jax_enable_x64", True)
    mode = argv[0]
    if mode == "single":
        result = single()
    elif mode == "multihost":
        result = multihost(*map(int, argv[1:4]))
    elif mode == "reference":
        result = reference()
    else:
        raise SystemExit(f"unknown mode {mode!r}; use single, multihost or reference")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
