"""Long runs: an online estimator over 1e5 steps at constant memory, and a soak of
``unroll compare`` with every estimator that must finish without a single warning."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.stochastic import THETA, linear_quadratic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HORIZON = 100_000  # one episode of 1e5 steps
TRUNCATION = 100


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def temp_bytes(estimator, theta) -> int:
    state = jax.eval_shape(estimator.init, theta, jax.random.key(0))
    compiled = jax.jit(estimator.estimate).lower(theta, state, jax.random.key(1)).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pes", "rtrl"])
def test_online_estimator_runs_1e5_steps_at_constant_memory(name):
    """1000 windows of 100 steps cover a whole 1e5-step episode. The compiled window
    needs the same scratch memory at horizon 1e3 and 1e5, the process does not grow
    between window 200 and window 1000, and ``unroll.train`` runs the same 1e5 steps
    with finite, improving losses."""
    theta = jnp.asarray(THETA)

    def build(horizon):
        system = linear_quadratic(horizon)
        if name == "pes":
            return unroll.pes(system, truncation=TRUNCATION, sigma=0.1, num_particles=4, num_workers=2)
        return unroll.rtrl(system, truncation=TRUNCATION, num_workers=2)

    estimator = build(HORIZON)
    assert temp_bytes(estimator, theta) == temp_bytes(build(1_000), theta)

    estimate = jax.jit(estimator.estimate)
    state = jax.jit(estimator.init)(theta, jax.random.key(0))
    grads = []
    for window in range(HORIZON // TRUNCATION):
        grad, state, info = estimate(theta, state, jax.random.fold_in(jax.random.key(1), window))
        grads.append(grad)  # kept: the loop itself holds what a training history would
        if window == 199:
            jax.block_until_ready(state)
            before = rss_bytes()
    jax.block_until_ready(state)
    growth = rss_bytes() - before
    print(f"{name}: resident memory grew by {growth / 2**20:.2f} MiB from window 200 to window 1000")
    assert growth < 16 * 2**20, f"{name}: the process grew by {growth / 2**20:.1f} MiB over 800 windows"
    assert np.all(np.isfinite(np.stack([np.asarray(g) for g in grads])))

    _, history = unroll.train(
        estimator, optax.adam(1e-2), theta, jax.random.key(2), HORIZON // TRUNCATION, progress=False
    )
    assert int(np.sum(history["steps"])) == 2 * (4 if name == "pes" else 1) * HORIZON
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-100:].mean() < history["loss"][:100].mean()


@pytest.mark.slow
def test_compare_soak_with_every_estimator_raises_no_warning(tmp_path):
    """`unroll compare` runs every estimator family on a small task under `python -W error`:
    any warning (ours, JAX's, matplotlib's) would end the run with a traceback."""
    families = [
        "full-bptt",
        "checkpointed-bptt",
        "tbptt-10",
        "rtrl",
        "uoro",
        "snap",
        "dni",
        "forward",
        "es",
        "tes",
        "pes",
        "nres",
    ]
    out = tmp_path / "soak"
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-m",
            "unroll.cli",
            "compare",
            "influence-balancing",
            "--estimators",
            *families,
            "--seeds",
            "2",
            "--steps",
            "10",
            "--horizon",
            "40",
            "--out",
            str(out),
            "--no-progress",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    for name in ("metrics.csv", "summary.json", "curves.png"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.stem for p in (out / "checkpoints").glob("*.npz")) == sorted(families)
