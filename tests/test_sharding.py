"""``unroll.shard``: estimators split over devices and processes equal the unsharded ones.

The pytest process has one CPU device and an initialized backend, so the multi-device
checks run ``tests/sharding_worker.py`` in fresh processes with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (8 devices; or 2 processes of 4
joined by ``jax.distributed`` on localhost) and assert on the ``RESULT`` line it prints.
The argument checks that need no devices run here.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import unroll
from tests.stochastic import linear_quadratic
from tests.systems import ESTIMATOR_NAMES, REGISTERED, rnn_system, rnn_theta, sharding_case
from unroll._engine import reset_schedule
from unroll.sharding import state_shardings

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "sharding_worker.py"
TOL = 1e-10
TIMEOUT_S = 600


def worker_env(num_devices: int) -> dict:
    """This session's environment (its XLA optimization level included) plus forced host
    devices, x64 and the repository on the path."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={num_devices}".strip()
    env["JAX_ENABLE_X64"] = "1"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def parse(stdout: str, stderr: str, returncode: int) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        pytest.fail(f"sharding worker failed (exit {returncode}):\n{stdout[-3000:]}\n--- stderr ---\n{stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def run_worker(*args: str, num_devices: int) -> dict:
    done = subprocess.run(
        [sys.executable, str(WORKER), *args],
        env=worker_env(num_devices),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return parse(done.stdout, done.stderr, done.returncode)


@pytest.fixture(scope="module")
def single():
    """Every estimator, sharded over 8 forced host devices, against itself unsharded.

    One ~60 s subprocess, run once: pyproject's ``--dist loadfile`` keeps this file's
    tests in one xdist worker (split over workers, each would run it again)."""
    return run_worker("single", num_devices=8)


@functools.cache
def _unsharded_state(name):
    """The estimator's unsharded state's shapes (cached: evaluated when a test asks, not at collection,
    which every xdist worker does)."""
    estimator, theta = sharding_case(name)
    return jax.eval_shape(estimator.init, theta, jax.random.key(0))


# the cases of the `single` run: every registered estimator, plus PES split over its particles and on a 2-D mesh
SHARDED_CASES = (*ESTIMATOR_NAMES, "pes_particles", "pes_2d_mesh")


def shard_shape(name: str) -> list[int]:
    """The per-device block of the [W, P] trajectories: every registered estimator has 8 workers, one per
    device, and all of its particles (its unsharded state says how many)."""
    special = {
        "pes_particles": [1, 2],  # num_workers=1, num_particles=16, spec P(None, "d")
        "pes_2d_mesh": [1, 2],  # 4 x 4 trajectories on a ("w": 4, "p": 2) mesh, spec P("w", "p")
    }
    return special[name] if name in special else [1, _unsharded_state(name).workers.t.shape[1]]


def num_replicated(name: str) -> int:
    """The leaves of the state that are not per trajectory (dni: synthesizer + adam state), replicated."""
    return len(jax.tree_util.tree_leaves(_unsharded_state(name).shared)) if name in ESTIMATOR_NAMES else 0


# their backward scan sums theta's cotangent over the trajectories at every step, one
# all-reduce per step (XLA's CPU pipeline does not move it out of the loop)
REVERSE_MODE = {name for name, entry in REGISTERED.items() if entry.family in ("bptt", "synthetic")}


@pytest.mark.slow
@pytest.mark.parametrize("name", SHARDED_CASES)
def test_sharded_windows_equal_unsharded(single, name):
    r = single[name]
    # three consecutive jitted windows: same gradients, losses and final state (same keys)
    assert r["grad_rel_diff"] < TOL and r["loss_rel_diff"] < TOL and r["state_rel_diff"] < TOL, r
    assert r["state_ints_equal"], r
    # the trajectories really are split over all 8 devices, the gradient is replicated
    assert r["t_devices"] == 8 and not r["t_replicated"], r
    assert r["t_shard_shape"] == shard_shape(name), r
    assert r["worker_leaves_all_split"] and r["on_all_devices"] and r["grad_replicated"], r
    assert r["all_reduces"] > 0, r
    if name not in ("pes_particles", "pes_2d_mesh"):  # (split particles gather the antithetic noise)
        assert r["all_gathers"] == 0, r
    if name not in REVERSE_MODE:  # the steps of the window communicate nothing
        assert r["loop_collectives"] == 0, r
    assert r["num_replicated"] == num_replicated(name), r
    if name == "dni":
        assert r["num_replicated"] == 7, r  # synthesizer + adam state


@pytest.mark.slow
def test_train_with_sharded_estimator_equals_unsharded(single):
    r = single["train"]
    assert r["theta_rel_diff"] < TOL and r["loss_rel_diff"] < TOL and r["theta_replicated"], r


@pytest.mark.slow
def test_indivisible_axis_fails_at_trace_time(single):
    message = single["indivisible_error"]
    assert message is not None
    for needle in ("`spec`=P('d',)", "size 3", "8 devices", "num_workers a multiple of 8", "P(None, 'd')"):
        assert needle in message, message


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one():
    """2 processes x 4 CPU devices (``jax.distributed`` on localhost, gloo collectives)
    run one sharded pes over the 8-device global mesh; both report the gradients that
    one process computes alone, unsharded."""
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "multihost", str(i), "2", str(port)],
            env=worker_env(4),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        reference = run_worker("reference", num_devices=1)
        results = [parse(*proc.communicate(timeout=TIMEOUT_S), proc.returncode) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert sorted(r["process_index"] for r in results) == [0, 1]
    for r in results:
        assert (r["process_count"], r["device_count"], r["local_device_count"]) == (2, 8, 4), r
        assert r["collectives"] == "gloo", r
        assert r["t_devices"] == 8 and not r["t_fully_addressable"] and r["t_local_shards"] == 4, r
        assert jnp.allclose(jnp.asarray(r["grads"]), jnp.asarray(reference["grads"]), rtol=TOL, atol=0), r
        assert jnp.allclose(jnp.asarray(r["losses"]), jnp.asarray(reference["losses"]), rtol=TOL, atol=0), r


# ------------------------------------------------------------------ here, one device


def _pes():
    return unroll.pes(linear_quadratic(7), truncation=3, sigma=0.1, num_particles=2, num_workers=2)


@pytest.mark.parametrize(
    "spec, error, needle",
    [
        (P("x"), ValueError, "names the mesh axis 'x', but the mesh has axes ('d',)"),
        (P("d", "d"), ValueError, "uses a mesh axis twice"),
        (P("d", None, None), ValueError, "pass at most two"),
        ("d", TypeError, "PartitionSpec(None, 'd') (particles)"),
    ],
)
def test_bad_spec_fails_at_construction(spec, error, needle):
    mesh = jax.make_mesh((1,), ("d",))
    with pytest.raises(error, match="`spec`") as info:
        unroll.shard(_pes(), mesh, spec)
    assert needle in str(info.value)


def test_bad_mesh_fails_at_construction():
    with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh, got list"):
        unroll.shard(_pes(), jax.devices())


def test_state_shardings_split_the_trajectories_and_replicate_the_rest():
    mesh = jax.make_mesh((1,), ("d",))
    est = unroll.dni(rnn_system(), truncation=2, num_workers=2)
    state = jax.eval_shape(est.init, rnn_theta(), jax.random.key(0))
    shardings = state_shardings(state, mesh)
    split, whole = P("d"), P()
    assert all(s.spec == split for s in jax.tree_util.tree_leaves(shardings.workers))
    others = jax.tree_util.tree_leaves(shardings.shared)
    assert others and all(s.spec == whole for s in others)
    # a state with no Worker (a custom estimator's) is replicated
    assert all(s.spec == whole for s in jax.tree_util.tree_leaves(state_shardings({"a": jnp.zeros((2, 2))}, mesh)))


def _stepped_schedule(t, horizon: int, num_steps: int, active) -> list[bool]:
    """What the scan sees: ``any(t >= horizon)`` before each step, the times going +1 per
    active step, to 0 on a reset, unchanged when inactive."""
    schedule = []
    for k in range(num_steps):
        schedule.append(bool(np.any(t >= horizon)))
        t = np.where(k < active, np.where(t >= horizon, 0, t) + 1, t)
    return schedule


@pytest.mark.parametrize("horizon, num_steps", [(1, 1), (5, 1), (5, 3), (5, 5), (8, 6)])
def test_reset_schedule_matches_stepping_the_times(horizon, num_steps):
    """``run_windows`` reads "does some trajectory reset at step k" from a schedule made
    before the scan, so the steps need no reduction over the (sharded) trajectories."""
    rng = np.random.default_rng(horizon * 10 + num_steps)
    t = rng.integers(0, horizon + 1, size=(256, 3))
    active = rng.integers(0, num_steps + 1, size=(256, 3))
    schedule = jax.jit(jax.vmap(lambda t, a: reset_schedule(t, horizon, num_steps, a)))
    got = np.asarray(schedule(jnp.asarray(t), jnp.asarray(active)))
    full = np.asarray(jax.jit(jax.vmap(lambda t: reset_schedule(t, horizon, num_steps)))(jnp.asarray(t)))
    for i in range(len(t)):
        assert got[i].tolist() == _stepped_schedule(t[i], horizon, num_steps, active[i]), (t[i], active[i])
        assert full[i].tolist() == _stepped_schedule(t[i], horizon, num_steps, num_steps), t[i]
