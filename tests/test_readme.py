"""The README's tour runs as written and its claims hold."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")


@pytest.mark.slow
def test_tour_runs_and_recovers_the_oscillator(capsys):
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks, "README has no python block"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    for name in ("full BPTT", "PES (10)"):
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        stiffness, damping = (float(x) for x in re.findall(r"(?:stiffness|damping) ([\d.]+)", line))
        assert stiffness == pytest.approx(4.0, abs=0.05) and damping == pytest.approx(0.3, abs=0.02), line


def test_readme_test_command_is_what_ci_runs():
    with open(README) as f:
        readme = f.read()
    with open(os.path.join(os.path.dirname(README), ".ci", "run")) as f:
        ci = f.read()
    command = re.search(r"\*\*Install and run the tests\*\*.*?```bash\n(.*?)\n```", readme, re.S).group(1)
    assert command.strip() in ci


def test_learned_optimizer_snippet_trains_with_the_saved_optimizer(capsys, monkeypatch):
    """The README's export snippet runs as written: the committed learned optimizer, loaded
    as an optax optimizer, trains a digits MLP it never saw (full batch, 300 steps) to a
    training loss below 1e-3 (chance: ln 10 = 2.30; Adam at the optimizer's starting
    learning rate, 1e-2, ends at 0.011)."""
    with open(README) as f:
        block = next(b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S) if "learned_optimizer.npz" in b)
    monkeypatch.chdir(os.path.dirname(README))
    exec(compile(block, "README.md", "exec"), {})
    value = float(re.search(r"training loss after 300 steps: ([\d.e+-]+)", capsys.readouterr().out).group(1))
    assert value < 1e-3
