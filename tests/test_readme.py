"""The README's 5-minute tour runs as written, on the real Gemma 3 270M (integration).

Its Python blocks run in order in one namespace, and its ``scope-hub`` shell lines run through
the CLI's ``main`` (all but ``import``, which needs a downloaded release), inside a temporary
folder with a temporary registry and cache: what a new user pastes must work.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scope_hub.cli import main

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _cli_lines() -> list[list[str]]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            args = shlex.split(line, comments=True)
            if args[:1] == ["scope-hub"] and args[1] not in ("import", "train"):
                lines.append(args[1:])
    return lines


def test_the_readme_tour_runs_as_written(gemma3_270m, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCOPE_HUB_REGISTRY", (tmp_path / "registry").as_uri())
    monkeypatch.setenv("SCOPE_HUB_CACHE", str(tmp_path / "cache"))
    python, cli = _blocks("python"), _cli_lines()
    assert len(python) >= 3 and [a[0] for a in cli][:5] == ["push", "ls", "pull", "lock", "card"], (python, cli)
    namespace: dict = {}
    for block in python[:2]:  # build, save; attach, observe, splice, steer, save the scoped model
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "my_sae" / "params.safetensors").is_file() and (tmp_path / "scoped").is_dir()
    for args in cli:  # push, ls, pull, lock, card, convert
        assert main(args) == 0, args
    out = capsys.readouterr().out
    assert "google/gemma-3-270m:resid_post/layer_12/width_16k/sae/mine" in out and (tmp_path / "scope.lock").is_file()
    for block in python[2:]:  # load it back by key and version
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["sae"].config.d_sae == 16384
