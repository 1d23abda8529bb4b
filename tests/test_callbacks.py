"""Metric streaming: ``train(..., callback=...)``, the TensorBoard writer, the tqdm progress bar."""

import io
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unroll
from tests.stochastic import THETA, linear_quadratic
from unroll._progress import progress


def read_scalars(logdir: str) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files of ``logdir`` (not its subfolders): ``tag -> {step: value}``.

    Reads the TFRecord framing itself (length, crc, event proto, crc), independently of the writer.
    """
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for name in sorted(os.listdir(logdir)):
        path = os.path.join(logdir, name)
        if not name.startswith("events.out.tfevents") or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[int(event.step)] = value.simple_value
    return out


def _run(callback=None, num_seeds=None, num_steps=7, **kwargs):
    system = linear_quadratic(5)
    est = unroll.pes(system, truncation=2, sigma=0.1, num_particles=2, num_workers=2)
    return unroll.train(
        est,
        optax.sgd(0.01),
        jnp.asarray(THETA),
        jax.random.key(0),
        num_steps,
        num_seeds=num_seeds,
        eval_fn=lambda theta: {"objective": jnp.sum(theta**2)},
        eval_every=3,
        progress=False,
        callback=callback,
        **kwargs,
    )


@pytest.mark.parametrize("num_seeds", [None, 2])
def test_callback_gets_every_step_once_in_order(num_seeds):
    calls = []
    _, history = _run(lambda step, metrics: calls.append((step, metrics)), num_seeds=num_seeds, callback_every=3)
    assert [step for step, _ in calls] == [3, 6, 7]  # every 3 steps, then the rest at the end
    steps = np.concatenate([m["step"] for _, m in calls])
    np.testing.assert_array_equal(steps, np.arange(1, 8))
    for key in ("loss", "grad_norm", "steps"):  # the pieces put together are the history, bit for bit
        np.testing.assert_array_equal(np.concatenate([m[key] for _, m in calls], axis=-1), history[key])
    eval_steps = np.concatenate([m["eval_step"] for _, m in calls if "eval_step" in m])
    np.testing.assert_array_equal(eval_steps, history["eval_step"])  # 0, 3, 6 and the last, 7
    values = np.concatenate([m["eval/objective"] for _, m in calls if "eval_step" in m], axis=-1)
    np.testing.assert_array_equal(values, history["eval/objective"])


def test_callback_does_not_change_the_run():
    plain_theta, plain = _run()
    theta, history = _run(lambda step, metrics: None, callback_every=1)
    np.testing.assert_array_equal(np.asarray(theta), np.asarray(plain_theta))
    np.testing.assert_array_equal(history["loss"], plain["loss"])


def test_a_resumed_run_calls_back_from_where_it_resumes(tmp_path):
    path = str(tmp_path / "run.npz")

    class Stop(Exception):
        pass

    def stop_at_6(step, metrics):
        if step == 6:
            raise Stop  # the run ends there; its checkpoint holds the first 4 steps

    with pytest.raises(Stop):
        _run(stop_at_6, checkpoint=path, checkpoint_every=4, callback_every=3)
    resumed = []
    _, history = _run(lambda s, m: resumed.append(m["step"]), checkpoint=path, checkpoint_every=4, callback_every=3)
    np.testing.assert_array_equal(np.concatenate(resumed), np.arange(5, 8))
    np.testing.assert_array_equal(history["loss"], _run()[1]["loss"])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"callback": "print"}, TypeError, "`callback` must be a function"),
        ({"callback": print, "callback_every": 0}, ValueError, "callback_every"),
        ({"callback": print, "callback_every": 2.5}, TypeError, "callback_every"),
    ],
)
def test_bad_callbacks_are_refused(kwargs, error, match):
    system = linear_quadratic(5)
    with pytest.raises(error, match=match):
        unroll.train(unroll.full_bptt(system), optax.sgd(0.1), jnp.asarray(THETA), jax.random.key(0), 2, **kwargs)


@pytest.mark.parametrize("num_seeds", [None, 2])
def test_tensorboard_event_files_hold_the_history(tmp_path, num_seeds):
    writer = unroll.callbacks.tensorboard(str(tmp_path))
    _, history = _run(writer, num_seeds=num_seeds, callback_every=2)
    writer.close()
    folders = [str(tmp_path)] if num_seeds is None else [str(tmp_path / f"seed{i}") for i in range(num_seeds)]
    for i, folder in enumerate(folders):
        scalars = read_scalars(folder)
        row = (lambda x: x) if num_seeds is None else (lambda x, i=i: x[i])
        for tag in ("loss", "grad_norm", "steps"):
            logged = [scalars[tag][s] for s in range(1, 8)]
            np.testing.assert_allclose(logged, row(history[tag]).astype(np.float32), rtol=1e-7)
        evaluated = scalars["eval/objective"]
        assert sorted(evaluated) == history["eval_step"].tolist()
        np.testing.assert_allclose(
            [evaluated[int(s)] for s in history["eval_step"]], row(history["eval/objective"]), rtol=1e-6
        )


def test_tensorboard_names_the_missing_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboardx(name, *args, **kwargs):
        if name.startswith("tensorboardX"):
            raise ImportError("no tensorboardX")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboardx)
    with pytest.raises(ImportError, match=r"pip install 'unroll\[log\]'"):
        unroll.callbacks.tensorboard("runs/tb")


def test_progress_bar_shows_step_rate_and_loss():
    stream = io.StringIO()
    for i in progress(5, "pes", postfix=lambda: "loss=0.5", stream=stream):
        if i == 3:
            break  # a run stopped early (a time limit): the bar shows the steps done
    text = stream.getvalue()
    assert "pes" in text and "4/5" in text and "step/s" in text and "loss=0.5" in text
    silent = io.StringIO()
    assert list(progress(5, "pes", enabled=False, stream=silent)) == list(range(5))
    assert silent.getvalue() == ""
    resumed = io.StringIO()
    assert list(progress(5, "pes", stream=resumed, start=2)) == [2, 3, 4]
    assert "5/5" in resumed.getvalue()
