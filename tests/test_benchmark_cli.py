"""Every benchmark script takes ``--device {cpu,cuda}`` and ``--only``, and refuses cuda without a GPU.

Import-only: each script builds its argument parser (``build_parser``) without running anything.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py") if '__name__ == "__main__"' in p.read_text())


def test_every_script_is_found() -> None:
    # The glob above must see the scripts (a renamed folder would make every check below vacuous).
    assert {"circuits_vs_circuit_tracer", "registry_bench", "scoped_model_bench", "run_all"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_accepts_device_and_only(name: str) -> None:
    before = dict(os.environ)
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    finally:  # scripts set HF_HUB_OFFLINE & co. at import, for their own process; not for the tests after this one
        os.environ.clear()
        os.environ.update(before)
    parser = module.build_parser()
    actions = {option: action for action in parser._actions for option in action.option_strings}
    assert actions["--device"].choices is not None and set(actions["--device"].choices) == {"cpu", "cuda"}
    assert actions["--device"].default == "cpu"
    choices = actions["--only"].choices
    part = str(next(iter(choices))) if choices is not None else "anything"
    for device in ("cpu", "cuda"):
        args = parser.parse_args(["--device", device, "--only", part])
        assert args.device == device
        assert [str(p) for p in args.only] == [part]
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "tpu"])


def test_cuda_is_refused_without_a_gpu(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as raised:
        resolve_device("cuda")
    assert re.search(r"torch\.cuda is not available.*--device cpu", str(raised.value))
    assert resolve_device("cpu") == torch.device("cpu")
