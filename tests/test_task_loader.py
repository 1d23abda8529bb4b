"""Tasks from the user's own code: ``unroll compare path/to/file.py:NAME``, ``package.module:NAME``
and installed entry points; bad references are one line and exit 2, an error in the user's
code keeps its traceback."""

import csv
import importlib.metadata
import json
import os
import subprocess
import sys
import traceback

import jax
import numpy as np
import pytest

import unroll
from tests import user_task
from unroll import _task_loader as task_loader
from unroll import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def lotka(tmp_path):
    return user_task.write(tmp_path)


def test_a_file_task_is_made_with_its_options(lotka):
    loaded = task_loader.load_task(f"{lotka}:make", {"horizon": 12})
    assert isinstance(loaded.task, unroll.Task) and loaded.task.system.horizon == 12
    assert loaded.task.name == "lotka" and loaded.options == {"horizon": 12}
    assert loaded.source == f"file {lotka}:make"
    assert task_loader.load_task(f"{lotka}:ready").task.system.horizon == 20  # a Task itself


def test_a_module_task_and_an_entry_point_run_the_same_task(lotka, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    by_module = task_loader.load_task("lotka:make", {"horizon": 12}).task
    entry = importlib.metadata.EntryPoint("lotka-rates", "lotka:make", task_loader.ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        task_loader.importlib.metadata,
        "entry_points",
        lambda group: [entry] if group == task_loader.ENTRY_POINT_GROUP else [],
    )
    by_entry = task_loader.load_task("lotka-rates", {"horizon": 12})
    assert by_entry.source == "entry point lotka:make"
    key = jax.random.key(1)
    assert float(unroll.episode_loss(by_module.system, by_module.theta, key)) == float(
        unroll.episode_loss(by_entry.task.system, by_entry.task.theta, key)
    )


def test_unroll_list_shows_and_compare_runs_an_entry_point(lotka, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("lotka-rates", "lotka:make", task_loader.ENTRY_POINT_GROUP)
    monkeypatch.setattr(task_loader.importlib.metadata, "entry_points", lambda group: [entry])
    assert cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "task lotka-rates (entry point lotka:make): Lotka-Volterra rates" in listed
    assert "options: horizon=30, learning_rate=0.05" in listed
    out = tmp_path / "run"
    argv = ["compare", "lotka-rates", "--estimators", "tbptt-5", "--steps", "3", "--seeds", "1"]
    assert cli.main(argv + ["--task-option", "horizon=10", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "lotka" and summary["task_options"] == {"horizon": 10} and summary["horizon"] == 10
    assert summary["task_source"] == "entry point lotka:make"


def _one_line_error(argv, capsys) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "spec, extra, needle",
    [
        ("missing.py:make", [], "no such file 'missing.py'"),
        ("{lotka}:mak", [], "has no attribute 'mak'; it defines broken, euler, init, make, ready"),
        ("{lotka}:not_a_task", [], "is a int, not an unroll.Task or a function returning one"),
        ("{lotka}:returns_a_number", [], "returned int, not an unroll.Task"),
        ("{lotka}:make", ["--task-option", "width=3"], "got an unexpected keyword argument 'width'; its options: "),
        ("{lotka}:make", ["--task-option", "width"], "--task-option 'width': write KEY=VALUE"),
        ("{lotka}:ready", ["--task-option", "horizon=3"], "is a Task, which takes no options"),
        ("{lotka}:make", ["--budget", "seconds=0"], "the amount must be positive"),
        ("{lotka}:make", ["--budget", "system-steps=-5"], "the amount must be positive"),
        ("{lotka}:make", ["--budget", "hours=2"], "unknown budget kind 'hours'"),
        ("{lotka}:make", ["--budget", "system-steps=10"], "budget system-steps=10 is less than one outer step of"),
        ("no_such_module_xyz:make", [], "no module named 'no_such_module_xyz'"),
        ("lotka.py", [], "unknown task 'lotka.py' (a file's task is named file.py:NAME)"),
    ],
)
def test_bad_task_references_are_one_line_and_exit_2(spec, extra, needle, lotka, tmp_path, capsys):
    argv = ["compare", spec.format(lotka=lotka), "--steps", "2", "--out", str(tmp_path / "x"), "--no-progress"]
    assert needle in _one_line_error(argv + extra, capsys)


def test_an_error_in_the_users_code_keeps_its_traceback(lotka, tmp_path, capsys):
    """Not a usage error: the user's own ValueError propagates with the user's frame on top."""
    with pytest.raises(ValueError, match="the user's own check failed") as info:
        cli.main(["compare", f"{lotka}:broken", "--out", str(tmp_path / "x"), "--no-progress"])
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].filename == lotka and frames[-1].name == "broken"


def test_a_shape_bug_in_the_users_step_raises_jaxs_error_at_the_users_line(lotka, tmp_path):
    with pytest.raises(TypeError) as info:
        cli.main(["compare", f"{lotka}:shape_bug", "--out", str(tmp_path / "x"), "--no-progress"])
    message = str(info.value)
    assert "dot_general requires contracting dimensions to have the same shape" in message
    assert "init" not in message
    frames = traceback.extract_tb(info.value.__traceback__)
    ours = [i for i, f in enumerate(frames) if f.filename == lotka]
    assert ours and frames[ours[-1]].line.strip().startswith('h = jnp.tanh(theta["w"] @ state)')
    assert len(frames) - ours[-1] <= 4  # the user's line, then at most jax.numpy's own frames
    assert all("jax/_src/interpreters" not in f.filename for f in frames)  # JAX's filtering stays on


def _subprocess(argv, cwd, out, script=False):
    """``python -m unroll.cli ARGV`` (or, with ``script``, the installed ``unroll`` command, which
    unlike ``python -m`` does not put the working directory on the path itself)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_ENABLE_X64="1")
    command = os.path.join(os.path.dirname(sys.executable), "unroll")
    command = [command] if script and os.path.exists(command) else [sys.executable, "-m", "unroll.cli"]
    run = subprocess.run(
        [*command, *argv, "--out", str(out)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    return run


def _final_theta(summary, name):
    entry = summary["estimators"][name]
    return np.array([entry["final_log_a"]["per_seed"], entry["final_log_b"]["per_seed"]])


def test_compare_on_a_new_system_file_and_module_as_subprocesses(lotka, tmp_path):
    """The issue's proof: a system no built-in task has, written to a temporary folder, through
    `unroll compare that_file.py:make` in a subprocess; full-bptt's final theta equals a direct
    `unroll.train` with the same settings and keys (1e-12); the `module:NAME` form runs it too."""
    argv = ["--estimators", "full-bptt", "tbptt-5", "pes", "--steps", "40", "--seeds", "2", "--no-progress"]
    out = tmp_path / "file-form"
    run = _subprocess(["compare", f"{lotka}:make", *argv], ROOT, out)
    assert "lotka (horizon 30)" in run.stdout
    for name in ("metrics.csv", "summary.json", "curves.png", "report.md"):
        assert (out / name).stat().st_size > 100, name
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 40 and {"objective", "log_a", "log_b"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())

    task = task_loader.load_task(f"{lotka}:make").task
    estimator = unroll.full_bptt(task.system, num_workers=task.settings["num_workers"])
    theta, _ = unroll.train(
        estimator, task.optimizer(40), task.theta, jax.random.key(0), 40, num_seeds=2, progress=False
    )
    direct = np.array([theta["log_a"], theta["log_b"]])
    np.testing.assert_allclose(_final_theta(summary, "full-bptt"), direct, rtol=0, atol=1e-12)
    assert summary["estimators"]["full-bptt"]["settings"] == {"num_workers": 2}

    package = tmp_path / "usertasks"  # the same module inside a package: package.module:NAME
    package.mkdir()
    (package / "__init__.py").write_text("")
    user_task.write(package)
    module_out = tmp_path / "module-form"
    _subprocess(["compare", "usertasks.lotka:make", *argv[:2], *argv[-5:]], tmp_path, module_out, script=True)
    again = json.loads((module_out / "summary.json").read_text())
    np.testing.assert_allclose(_final_theta(again, "full-bptt"), direct, rtol=0, atol=1e-12)
    assert again["task_source"] == "module usertasks.lotka:make" and again["task"] == "lotka"


CHEAP_OPTIONS = {  # each built-in task at a small size (the learned-optimizer tasks tune Adam by grid first)
    "influence-balancing": {"horizon": 20},
    "copy": {"horizon": 14, "hidden": 4},
    "flip-flop": {"horizon": 10, "hidden": 4},
    "char-lm": {"horizon": 8, "hidden": 4},
    "long-dependency": {"horizon": 10, "hidden": 4},
    "lorenz": {"horizon": 10},
    "lr-schedule": {"horizon": 10},
    "mlp-hyper": {"horizon": 10},
}


@pytest.mark.parametrize("name", sorted(CHEAP_OPTIONS))
def test_every_built_in_task_is_a_task_named_as_listed(name):
    loaded = task_loader.load_task(name, CHEAP_OPTIONS[name])
    assert isinstance(loaded.task, unroll.Task) and loaded.task.name == name and loaded.source == "built-in"
    assert loaded.task.system.horizon == CHEAP_OPTIONS[name]["horizon"]
    assert loaded.task.default_estimators == task_loader.DEFAULT_ESTIMATORS[name]
    assert set(task_loader.TASKS) == set(CHEAP_OPTIONS) | {"lopt-digits", "lopt-quadratic"}
