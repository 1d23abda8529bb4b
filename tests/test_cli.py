"""`unroll compare` end to end and the CLI's one-line errors."""

import csv
import json
import os

import pytest

from unroll import cli


def test_compare_writes_csv_json_and_png(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main([
        "compare", "influence-balancing", "--estimators", "pes,tbptt-1", "full-bptt", "--seeds", "2",
        "--steps", "5", "--horizon", "40", "--out", str(out), "--no-progress",
    ])
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
    assert {"recall_accuracy", "objective", "train_time_s"} <= set(rows[0])
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
