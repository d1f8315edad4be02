"""docs/circuits.md's Python examples run as written.

Every ```python block runs in one namespace inside a temporary folder, the "Getting transcoders
offline" block first (it writes the ``runs/tc/layer_*`` folders the tracing example reads). The fast
test swaps Gemma 3 270M for the tiny Gemma 3 and its byte tokenizer (``load_causal_lm`` patched), so
the code path is the documented one in seconds; the integration test runs the real model. The
documented ``scope-hub push`` (key form, license) and ``scope-hub trace`` lines of that section run
too, on the tiny model's folder.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import scope_hub.gguf_models
from scope_hub.cli import main
from scope_hub.testing.tiny_models import tiny_gemma3, tiny_tokenizer

DOC = Path(__file__).resolve().parents[3] / "docs" / "circuits.md"


def python_blocks() -> list[str]:
    """The doc's ```python blocks, the one fitting quick transcoders first."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    return sorted(blocks, key=lambda block: "quick_transcoders(" not in block)


def documented_push() -> list[str]:
    """The doc's ``scope-hub push`` arguments for layer 1 (its key form and options)."""
    (line,) = set(re.findall(r"scope-hub (push .+)$", DOC.read_text(), flags=re.M))
    return shlex.split(line.replace("$L", "1"))


def documented_traces() -> list[list[str]]:
    """The ``scope-hub trace`` command lines of the "Getting transcoders offline" section."""
    section = DOC.read_text().split("## Getting transcoders offline", 1)[1].split("\n## ", 1)[0]
    lines = re.findall(r"^scope-hub (trace .+?)$", section.replace("\\\n", " "), flags=re.M)
    return [shlex.split(line) for line in lines]


def _run_blocks(tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    blocks = python_blocks()
    assert len(blocks) >= 2 and "quick_transcoders(" in blocks[0] and "attribute(" in blocks[1], blocks
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    return namespace


def test_the_doc_examples_run_on_a_tiny_model(tmp_path, monkeypatch, capsys):
    model, tok = tiny_gemma3().eval(), tiny_tokenizer()
    monkeypatch.setattr(scope_hub.gguf_models, "gemma3_270m_path", lambda *a, **k: "tiny-gemma3")
    monkeypatch.setattr(scope_hub.gguf_models, "load_causal_lm", lambda *a, **k: (model, tok))
    ns = _run_blocks(tmp_path, monkeypatch)
    assert sorted(p.name for p in (tmp_path / "runs" / "tc").iterdir()) == ["layer_0", "layer_1", "layer_2"]
    assert ns["graph"].relative_completeness_error() < 1e-4
    assert (tmp_path / "graphs" / "berlin.json").is_file() and (tmp_path / "graphs" / "berlin.html").is_file()
    assert "actual" in capsys.readouterr().out  # the interventions table was printed
    # the documented push (key form, license) passes push's checks (the tiny transcoders are 256 wide, like the doc's)
    registry = (tmp_path / "registry").as_uri()
    assert main(["--registry", registry, *documented_push()]) == 0, capsys.readouterr().err
    model.save_pretrained(tmp_path / "tiny"), tok.save_pretrained(tmp_path / "tiny")
    traces = documented_traces()
    assert len(traces) == 2 and all("gemma-3-270m" in args for args in traces), traces
    for args in traces:  # by folder, then by key pattern (layer 1 pushed above)
        args = [str(tmp_path / "tiny") if a == "gemma-3-270m" else a for a in args]
        assert main(["--registry", registry, *args, "--quiet", "--max-feature-nodes", "32"]) == 0, (
            capsys.readouterr().err
        )
    assert "dictionaries: layers 1; no dictionary (error node only): 0,2" in capsys.readouterr().out


@pytest.mark.integration
def test_the_doc_examples_run_on_gemma3_270m(gemma3_270m, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        scope_hub.gguf_models, "load_causal_lm", lambda *a, **k: (gemma3_270m.model, gemma3_270m.tokenizer)
    )
    ns = _run_blocks(tmp_path, monkeypatch)
    assert len(list((tmp_path / "runs" / "tc").iterdir())) == 18
    assert ns["graph"].relative_completeness_error() < 1e-4
    registry = (tmp_path / "registry").as_uri()
    assert main(["--registry", registry, *documented_push()]) == 0, capsys.readouterr().err
