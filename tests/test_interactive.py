"""scaffold new without --spec asks Copier's questions; drive them through a pty."""

from __future__ import annotations

import sys

import pytest

from conftest import run_project_tests

pexpect = pytest.importorskip("pexpect")

DOWN, ENTER, CLEAR = (
    "\x1b[B",
    "\r",
    "\x15",
)  # arrow down, enter, ctrl-u (clear a pre-filled default)


def answer(child, prompt: str, keys: str) -> None:
    child.expect(prompt)
    child.send(keys)


@pytest.mark.slow
def test_prompts_through_a_terminal_make_a_working_vae(tmp_path, env):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "scaffold.cli", "new", "my-vae"],
        cwd=str(tmp_path),
        env={**env, "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "xterm-256color"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    answer(child, "What kind of model", DOWN + DOWN + ENTER)  # cnn -> autoencoder -> vae
    answer(child, "Input shape", ENTER)  # 1, 28, 28
    answer(child, "Output channels of each conv block", CLEAR + "8, 16" + ENTER)
    answer(child, "Hidden layer sizes", ENTER)  # none
    answer(child, "Size of the latent code", CLEAR + "6" + ENTER)
    answer(child, "Training epochs", CLEAR + "2" + ENTER)
    answer(child, "Batch size", ENTER)
    answer(child, "Learning rate", ENTER)
    child.expect(pexpect.EOF, timeout=120)
    child.close()
    assert child.exitstatus == 0, child.before

    project = tmp_path / "my-vae"
    code = (project / "src" / "my_vae" / "model.py").read_text()
    assert "LATENT_DIM = 6" in code
    flat = "".join(code.split())  # black may put one argument per line
    assert (
        "ConvBlock(in_channels,8,3,stride=2,padding=1,norm_layer=nn.BatchNorm2d,act_layer=nn.ReLU"
        in flat
    )
    assert (
        "def __init__(self, in_channels: int = INPUT_SHAPE[0], latent_dim: int = LATENT_DIM)"
        in code
    )
    assert "epochs: int = option(2," in (project / "src" / "my_vae" / "train.py").read_text()
    answers = (project / ".copier-answers.yml").read_text()
    assert "latent: 6" in answers and "from_spec: false" in answers

    tests = run_project_tests(project, env)
    assert tests.returncode == 0, tests.stdout[-3000:]


def test_a_rejected_answer_is_asked_again(tmp_path, env):
    child = pexpect.spawn(
        sys.executable,
        ["-m", "scaffold.cli", "new", "proj"],
        cwd=str(tmp_path),
        env={**env, "PROMPT_TOOLKIT_NO_CPR": "1"},
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 200),
    )
    answer(child, "What kind of model", ENTER)
    answer(child, "Input shape", CLEAR + "1, 28, abc" + ENTER)
    child.expect("positive whole")  # the validator's message, shown at the prompt
    child.sendcontrol("c")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    assert not (tmp_path / "proj").exists()
