"""Checkpoint and resume of ``unroll.train`` (``unroll.resume``): a run killed at any
point and started again gives bit for bit the theta and history of a run never
stopped; corrupt or foreign checkpoints are refused with a message that says what to do.

The kills happen in subprocesses (``tests/resume_worker.py``), so that the signal
reaches a real process: SIGKILL (nothing can be saved: the run goes on from its last
periodic checkpoint) and SIGINT / SIGTERM (saved at the next step boundary, then
``TrainingInterrupted``).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.stochastic import THETA, linear_quadratic
from tests.systems import ESTIMATOR_NAMES, build_estimator, rnn_system, rnn_theta
from unroll.resume import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "resume_worker.py")
TIMED = ("train_time_s", "compile_s", "eval_time_s")  # wall-clock figures: the only entries allowed to differ


def worker(checkpoint: str, out: str, steps: int = 150) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKER, checkpoint, out, str(steps)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def kill_after_first_checkpoint(proc: subprocess.Popen, checkpoint: str, sig: int) -> None:
    deadline = time.monotonic() + 300
    while not os.path.exists(checkpoint):
        assert proc.poll() is None, f"the worker ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.005)
    proc.send_signal(sig)


def assert_same_run(a: str, b: str) -> None:
    with np.load(a) as x, np.load(b) as y:
        assert sorted(x.files) == sorted(y.files)
        for name in x.files:
            if name not in TIMED:
                np.testing.assert_array_equal(x[name], y[name], err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run (a subprocess), once: ``--dist loadfile`` keeps this file in one worker."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    out = str(folder / "out.npz")
    code, err = finished(worker(str(folder / "run.npz"), out))
    assert code == 0, err
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: signal.Signals(s).name)
def test_killed_run_resumes_bit_for_bit(sig, uninterrupted, tmp_path):
    checkpoint, out = str(tmp_path / "run.npz"), str(tmp_path / "out.npz")
    proc = worker(checkpoint, out)
    kill_after_first_checkpoint(proc, checkpoint, sig)
    code, err = finished(proc)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # saved at the next step boundary, then TrainingInterrupted (the worker exits with 3)
        assert code == 3, err
        assert f"{signal.Signals(sig).name} after outer step" in err and "to resume" in err
    assert not os.path.exists(out)
    with np.load(checkpoint) as saved:
        step = int(__import__("json").loads(str(saved["manifest"]))["meta"]["step"])
    assert 0 < step < 150, step  # it really stopped in the middle
    code, err = finished(worker(checkpoint, out))
    assert code == 0, err
    assert_same_run(uninterrupted, out)


def small_run(tmp_path, steps=4, theta=THETA, num_workers=2, **kwargs):
    system = linear_quadratic(5)
    est = unroll.pes(system, truncation=2, sigma=0.1, num_particles=2, num_workers=num_workers)
    return unroll.train(
        est,
        optax.sgd(1e-2),
        jnp.asarray(theta),
        jax.random.key(0),
        steps,
        progress=False,
        checkpoint=str(tmp_path / "run.npz"),
        **kwargs,
    )


def test_a_finished_run_is_read_back(tmp_path):
    theta, history = small_run(tmp_path, checkpoint_every=2)
    again_theta, again = small_run(tmp_path, checkpoint_every=2)
    np.testing.assert_array_equal(np.asarray(theta), np.asarray(again_theta))
    for k in history:
        if k not in TIMED:
            np.testing.assert_array_equal(history[k], again[k], err_msg=k)


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"steps": 5}, "num_steps: checkpoint 4, this run 5"),
        ({"theta": THETA + 1.0}, "theta: checkpoint"),
        ({"on_nonfinite": "skip"}, "on_nonfinite: checkpoint 'stop', this run 'skip'"),
        ({"run_info": {"task": "other"}}, "task: checkpoint None, this run 'other'"),
        ({"num_workers": 3}, "state leaf"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused(change, needle, tmp_path):
    small_run(tmp_path)
    with pytest.raises(CheckpointError, match="different run|another structure|state leaf") as err:
        small_run(tmp_path, **change)
    assert needle in str(err.value) and "start afresh" in str(err.value) or "delete it" in str(err.value)


def _rewrite(path, edit):
    with np.load(path) as data:
        contents = {name: data[name] for name in data.files}
    edit(contents)
    with open(path, "wb") as f:
        np.savez(f, **contents)


@pytest.mark.parametrize(
    "corrupt, needle",
    [
        (lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2), "cannot be read"),
        (lambda p: open(p, "wb").write(b"not a checkpoint"), "cannot be read"),
        (lambda p: _rewrite(p, lambda c: c.__setitem__("leaf_00000", c["leaf_00000"] + 1)), "checksum"),
        (lambda p: _rewrite(p, lambda c: c.pop("array/record/loss")), "is missing"),
        (lambda p: _rewrite(p, lambda c: c.pop("manifest")), "no readable manifest"),
    ],
    ids=["truncated", "garbage", "changed-leaf", "missing-array", "no-manifest"],
)
def test_a_corrupt_checkpoint_is_refused(corrupt, needle, tmp_path):
    small_run(tmp_path, checkpoint_every=2)
    corrupt(str(tmp_path / "run.npz"))
    with pytest.raises(CheckpointError, match=needle) as err:
        small_run(tmp_path, checkpoint_every=2)
    assert str(tmp_path / "run.npz") in str(err.value) and "delete it" in str(err.value)


def test_bad_checkpoint_arguments():
    system = linear_quadratic(5)
    est = unroll.full_bptt(system)
    with pytest.raises(ValueError, match="`checkpoint_every`=3 is set but `checkpoint` is None"):
        unroll.train(est, optax.sgd(0.1), jnp.asarray(THETA), jax.random.key(0), 4, checkpoint_every=3)
    with pytest.raises(ValueError, match="`checkpoint_every` must be a positive int"):
        unroll.train(
            est, optax.sgd(0.1), jnp.asarray(THETA), jax.random.key(0), 4, checkpoint="x.npz", checkpoint_every=-1
        )


def test_keys_and_integer_leaves_round_trip(tmp_path):
    """Typed PRNG keys, raw uint32 keys, ints, bools and floats of every width come back
    with their dtypes, shapes and bits."""
    from unroll import resume

    state = {
        "typed": jax.random.split(jax.random.key(3), 4),
        "raw": jax.random.PRNGKey(7),
        "count": jnp.asarray(5, jnp.int32),
        "flag": jnp.asarray([True, False]),
        "x32": jnp.asarray([1.5, -2.0], jnp.float32),
        "x64": jnp.asarray(np.pi, jnp.float64),
    }
    path = str(tmp_path / "s.npz")
    resume.save(path, state, {"history": np.arange(3.0)}, {"run": 1}, {"step": 2})
    back, arrays, meta = resume.load(path, state, {"run": 1})
    assert meta == {"step": 2}
    np.testing.assert_array_equal(arrays["history"], np.arange(3.0))
    for name in state:
        a, b = state[name], back[name]
        if name == "typed":
            assert jax.dtypes.issubdtype(b.dtype, jax.dtypes.prng_key)
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.shape(a) == np.shape(b), name
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_registered_estimator_resumes_bit_for_bit(name, tmp_path, monkeypatch):
    """A run resumed from its checkpoint after step 2 of 4 (the file as it was then, kept
    aside) ends with the theta and history of a run never stopped, for every registered
    estimator (two seeds, so the seed axis is covered too)."""
    from unroll import resume

    estimator = build_estimator(name, rnn_system(n=3, m=2, horizon=6), num_workers=2)
    optimizer = optax.sgd(0.05)  # the same objects each run: train compiles their step once

    def run(checkpoint=None):
        kwargs = {} if checkpoint is None else {"checkpoint": checkpoint, "checkpoint_every": 2}
        return unroll.train(
            estimator, optimizer, rnn_theta(), jax.random.key(1), 4, num_seeds=2, progress=False, **kwargs
        )

    theta, history = run()
    path, kept = str(tmp_path / "run.npz"), str(tmp_path / "after-step-2.npz")
    save = resume.save

    def save_and_keep(file, state, arrays, fingerprint, meta):
        save(file, state, arrays, fingerprint, meta)
        if not os.path.exists(kept):
            os.replace(file, kept)  # the first save (step 2) is kept aside; the run saves again at its end
            save(file, state, arrays, fingerprint, meta)

    monkeypatch.setattr(resume, "save", save_and_keep)
    run(path)
    monkeypatch.setattr(resume, "save", save)
    with np.load(kept) as data:
        assert int(json.loads(str(data["manifest"]))["meta"]["step"]) == 2
    os.replace(kept, path)
    resumed_theta, resumed = run(path)
    for a, b in zip(jax.tree_util.tree_leaves(theta), jax.tree_util.tree_leaves(resumed_theta)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
    assert set(history) == set(resumed)
    for k in history:
        if k not in TIMED:
            np.testing.assert_array_equal(history[k], resumed[k], err_msg=f"{name}: {k}")
