"""`unroll compare` end to end and the CLI's one-line errors."""

import csv
import json
import os

import pytest

from unroll import cli


def test_compare_writes_csv_json_and_png(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "compare",
            "influence-balancing",
            "--estimators",
            "pes,tbptt-1",
            "full-bptt",
            "--seeds",
            "2",
            "--steps",
            "5",
            "--horizon",
            "40",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 5
    assert {r["estimator"] for r in rows} == {"pes", "tbptt-1", "full-bptt"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"]["horizon"] == 40
    assert summary["seeds"] == [0, 1]
    assert "jax" in summary["versions"] and summary["command"].startswith("unroll compare")
    pes = summary["estimators"]["pes"]
    assert len(pes["final_theta"]["per_seed"]) == 2
    # the CSV's last theta of each seed is the summary's final theta
    last = [float(r["theta"]) for r in rows if r["estimator"] == "pes" and r["step"] == "5"]
    assert last == pytest.approx(pes["final_theta"]["per_seed"], rel=1e-6)
    # inner steps: pes runs 10 workers x 100 particles x 10 steps per outer step
    assert int([r for r in rows if r["estimator"] == "pes"][0]["inner_steps"]) == 10 * 100 * 10
    assert os.path.getsize(out / "curves.png") > 10_000
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["compare", "no-such-task"], "unknown task 'no-such-task'"),
        (["compare", "influence-balancing", "--estimators", "bogus"], "unknown estimator 'bogus'"),
        (["compare", "influence-balancing", "--estimators", "tbptt-5000"], "truncation 5000"),
        (["compare", "influence-balancing", "--estimators", "full-bptt-3"], "takes no truncation"),
        (["compare", "influence-balancing", "--steps", "0"], "`steps` must be a positive int"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    code = cli.main(argv + ["--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_compare_from_a_config_file_on_a_network_task(tmp_path, capsys):
    """--config gives the task, estimators, seeds, steps and task options; flags win over it.
    A task without a known optimum still writes every output, with its own metrics."""
    config = tmp_path / "copy.toml"
    config.write_text(
        'task = "copy"\nestimators = ["tbptt-4", "uoro-4"]\nseeds = 2\nsteps = 50\nhorizon = 14\n'
        '[task_options]\ncell = "lstm"\nhidden = 8\n'
    )
    out = tmp_path / "run"
    assert cli.main(["compare", "--config", str(config), "--steps", "3", "--out", str(out), "--no-progress"]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 3  # --steps 3 won over the file's 50
    assert {"recall_accuracy", "objective"} <= set(rows[0])
    times = json.loads((out / "summary.json").read_text())["estimators"]["uoro-4"]
    assert times["eval_steps"] == [0, 1, 2, 3] and times["eval_time_s"][-1] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reference"]["cell"] == "lstm" and summary["reference"]["hidden"] == 8
    assert summary["reference"]["horizon"] == 14
    assert set(summary["estimators"]) == {"tbptt-4", "uoro-4"}
    assert "--config" in summary["command"]
    assert os.path.getsize(out / "curves.png") > 10_000


@pytest.mark.parametrize(
    "text, needle",
    [
        ('task = "copy"\nsteeps = 3\n', "unknown key(s) steeps"),
        ('task = "copy"\nestimators = "pes"\n', "`estimators` must be a list"),
        ("task = [unclosed\n", "is not valid TOML"),
        ('task = "copy"\n[task_options]\nwidth = 3\n', "task 'copy'"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(text, needle, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    code = cli.main(["compare", "--config", str(config), "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "\n" not in err and "Traceback" not in err


SMALL = [
    "compare",
    "influence-balancing",
    "--estimators",
    "pes",
    "tbptt-10",
    "--seeds",
    "2",
    "--horizon",
    "40",
    "--no-progress",
]


def _csv_bytes(folder) -> bytes:
    return (folder / "metrics.csv").read_bytes()


def test_same_command_and_seed_give_identical_csvs(tmp_path, capsys):
    """metrics.csv holds no wall-clock figures (those go to summary.json): the same command
    and seed write the same bytes; another --seed writes other numbers."""
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert cli.main(SMALL + ["--steps", "6", "--seed", seed, "--out", str(tmp_path / name)]) == 0
    assert _csv_bytes(tmp_path / "a") == _csv_bytes(tmp_path / "b")
    assert _csv_bytes(tmp_path / "a") != _csv_bytes(tmp_path / "c")
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["seed_keys"] == "jax.random.split(jax.random.key(4), 2)"


def test_interrupted_compare_resumes_to_the_same_csv(tmp_path):
    """SIGTERM in the middle of `unroll compare`: one line naming the checkpoint and the
    command that resumes, exit code 143; that command then finishes the comparison with
    the same metrics.csv as a run never interrupted (pes runs first and is interrupted;
    tbptt-10 then runs only in the resumed process)."""
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = SMALL + ["--steps", "60", "--checkpoint-every", "2"]
    env = dict(os.environ, PYTHONPATH=root)

    def command(out):
        return [sys.executable, "-m", "unroll.cli", *argv, "--out", str(out)]

    reference = subprocess.run(command(tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr
    proc = subprocess.Popen(
        command(tmp_path / "run"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    checkpoint = tmp_path / "run" / "checkpoints" / "pes.npz"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "interrupted (SIGTERM) after outer step" in last and str(checkpoint) in last
    assert "resume with: " in last and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.csv").exists()
    again = last.split("resume with: ")[1].split()
    assert again[0] == "unroll" and again[1:] == [*argv, "--out", str(tmp_path / "run")]
    resumed = subprocess.run(
        [sys.executable, "-m", "unroll.cli", *again[1:]], env=env, capture_output=True, text=True, timeout=600, cwd=root
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _csv_bytes(tmp_path / "run") == _csv_bytes(tmp_path / "ref")


def test_a_checkpoint_of_another_comparison_is_refused(tmp_path, capsys):
    out = ["--out", str(tmp_path / "x")]
    assert cli.main(SMALL + ["--steps", "3"] + out) == 0
    capsys.readouterr()
    assert cli.main(SMALL + ["--steps", "4"] + out) == 2
    err = capsys.readouterr().err.strip()
    assert "was written by a different run (num_steps: checkpoint 3, this run 4)" in err
    assert "\n" not in err and "start afresh" in err


def test_a_diverging_estimator_is_recorded_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    """An estimator whose loss turns NaN stops at its last finite theta; the summary and
    the printed table say where; the other estimators run to the end."""
    import jax.numpy as jnp
    import optax

    import unroll
    from unroll import comparison

    def step(theta, state, t):
        return state, jnp.where(theta < 1.0, -theta, jnp.nan)  # the loss pushes theta up into NaN

    finite = unroll.System(lambda theta, key: jnp.zeros(()), lambda theta, state, t: (state, (theta - 0.7) ** 2), 2)

    def setup():
        system = unroll.System(lambda theta, key: jnp.zeros(()), step, 2)
        return unroll.Task(
            system=system,
            theta=jnp.asarray(0.55),
            evaluate=lambda th: {"objective": -th, "theta": th},
            reference={"objective": "-theta", "horizon": 2},
            settings=unroll.task.standard_settings(workers=1),
            # tbptt runs on a system that stays finite: it goes on to the last step
            estimators={"tbptt": lambda s, k: unroll.truncated_bptt(finite, truncation=k)},
            default_estimators=["full-bptt", "tbptt-1"],
            optimizer=lambda steps: optax.sgd(0.2),
            optimizer_description="sgd 0.2",
            default_steps=40,
            default_seeds=2,
        )

    monkeypatch.setitem(comparison.TASKS, "nan-test", setup)
    with pytest.warns(RuntimeWarning, match="full-bptt: a non-finite loss"):
        code = cli.main(["compare", "nan-test", "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    entry = summary["estimators"]["full-bptt"]
    # theta: 0.55 -> 0.75 -> 0.95 -> 1.15, whose loss (step 3) is NaN: stopped there
    assert entry["first_nonfinite_step"] == [3, 3]
    assert entry["final_theta"]["per_seed"] == pytest.approx([1.15, 1.15])
    assert entry["outer_steps_run"] == 16  # the loop ends at its first check once every seed has stopped
    out = capsys.readouterr().out
    assert "full-bptt: a non-finite loss or gradient (seed 0 at outer step 3, seed 1 at outer step 3)" in out
    other = summary["estimators"]["tbptt-1"]
    assert other["first_nonfinite_step"] == [-1, -1] and other["outer_steps_run"] == 40
    assert other["final_theta"]["mean"] == pytest.approx(0.7, abs=1e-3)


def test_compare_tensorboard_event_files_read_back_to_the_csv(tmp_path):
    from tests.test_callbacks import read_scalars

    out, board = tmp_path / "run", tmp_path / "tb"
    argv = ["compare", "influence-balancing", "--estimators", "pes", "tbptt-1", "--seeds", "2", "--steps", "6"]
    assert cli.main(argv + ["--horizon", "40", "--out", str(out), "--tensorboard", str(board), "--no-progress"]) == 0
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        scalars = read_scalars(str(board / row["estimator"] / f"seed{row['seed']}"))
        step = int(row["step"])
        assert scalars["loss"][step] == pytest.approx(float(row["window_loss"]), rel=1e-6)
        assert scalars["grad_norm"][step] == pytest.approx(float(row["grad_norm"]), rel=1e-5)
        if row["objective"]:
            assert scalars["eval/objective"][step] == pytest.approx(float(row["objective"]), rel=1e-6)
    assert sum(bool(r["objective"]) for r in rows) == len(rows)  # evaluated at every step of a 6-step run


def test_advise_writes_the_report_and_races_the_top_three(tmp_path, capsys):
    """`unroll advise FILE.py:NAME --verify`: advice.md (with its plots and the race's verdict),
    advice.json, the three plots, the recommendation as a line of Python."""
    out = tmp_path / "advice"
    argv = ["advise", "examples/oscillator.py:make", "--task-option", "horizon=40", "--seconds", "40"]
    argv += ["--candidates", "full-bptt", "tbptt-10", "pes-10", "--verify", "--verify-seconds", "1"]
    code = cli.main(argv + ["--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads((out / "advice.json").read_text())
    recommended = data["recommendation"]
    assert printed.count("recommended: unroll.") == 1 and recommended["python"] in printed
    assert data["command"].startswith("unroll advise examples/oscillator.py:make")
    assert {row["label"] for row in data["rows"]} == {"full-bptt", "tbptt-10", "pes-10"}
    for name in ("lyapunov.png", "gradient_norm.png", "frontier.png"):
        assert os.path.getsize(out / name) > 10_000 and f"]({name})" in (out / "advice.md").read_text()
    race = data["verification"]
    assert set(race["raced"]) <= {"full-bptt", "tbptt-10", "pes-10"} and race["winner"] in race["raced"]
    assert race["agrees"] == (race["winner"] == recommended["label"])
    assert "## Verification" in (out / "advice.md").read_text() and "Race (1 s" in printed
    assert (out / "verify" / "summary.json").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["advise", "influence-balancing", "--seconds", "1"], "`seconds`=1 is below"),
        (["advise", "influence-balancing", "--candidates", "bogus"], "unknown candidate 'bogus'"),
        (["advise", "influence-balancing", "--memory", "lots"], "`memory_budget`='lots'"),
        (["advise", "no-such-task"], "unknown task 'no-such-task'"),
    ],
)
def test_advise_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    code = cli.main(argv + ["--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and "\n" not in err and "Traceback" not in err


def test_advise_with_nothing_in_the_memory_budget_exits_1_and_says_why(tmp_path, capsys):
    argv = ["advise", "examples/oscillator.py:make", "--task-option", "horizon=40", "--candidates", "full-bptt"]
    code = cli.main(argv + ["--memory", "16B", "--seconds", "20", "--out", str(tmp_path / "a"), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "No recommendation: no candidate fits the memory budget of 16 B" in printed


def test_only_unrolls_own_usage_errors_are_one_line_exit_2(tmp_path, monkeypatch, capsys):
    # a plain ValueError raised inside unroll (a bug of ours, or one JAX raised through us) is not a
    # usage error: it propagates with its traceback
    from unroll import comparison

    def broken(task, task_options=None):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(comparison, "load_task", broken)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        cli.main(["compare", "influence-balancing", "--out", str(tmp_path / "x"), "--no-progress"])
    assert "error:" not in capsys.readouterr().err


def test_a_task_that_needs_a_missing_extra_names_it(tmp_path, monkeypatch, capsys):
    import sys

    from unroll.tasks import inner

    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn...` raises ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    inner.digits.cache_clear()
    try:
        code = cli.main(["compare", "lopt-digits", "--steps", "1", "--out", str(tmp_path / "x"), "--no-progress"])
    finally:
        inner.digits.cache_clear()
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'unroll[tasks]'" in err and "scikit-learn" in err


def test_import_unroll_imports_neither_matplotlib_nor_scikit_learn():
    import subprocess
    import sys

    code = "import sys, unroll; print(sorted(m for m in ('matplotlib', 'sklearn', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
