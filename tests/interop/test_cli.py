"""``scope-hub convert`` and ``scope-hub import`` through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scope_hub.cli import main
from scope_hub.dictionaries import Dictionary
from scope_hub.interop import saelens
from scope_hub.testing.dictionaries import make_config, make_dictionary
from tests.interop.release_fixtures import make_gs2_release

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    for name in ("SCOPE_HUB_OFFLINE", "HF_HUB_OFFLINE", "SCOPE_HUB_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCOPE_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SCOPE_HUB_REGISTRY", (tmp_path / "default-registry").as_uri())
    monkeypatch.setenv("CI", "1")


def test_convert_detects_the_source_format_and_round_trips(tmp_path, capsys):
    module = make_dictionary(make_config("sae", "topk"))
    module.save_pretrained(tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), "--to", "saelens", str(tmp_path / "sl")]) == 0
    assert "scope-hub -> saelens" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "sl"), "--to", "sparsify", str(tmp_path / "sp")]) == 0
    back_args = ["convert", str(tmp_path / "sp"), "--from", "sparsify", "--to", "scope-hub", str(tmp_path / "back")]
    assert main(back_args) == 0
    back = Dictionary.from_pretrained(tmp_path / "back")
    assert back.config == module.config
    assert torch.equal(back.w_enc, module.w_enc) and torch.equal(back.w_dec, module.w_dec)


def test_convert_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("hi")
    assert main(["convert", str(tmp_path / "nothing"), "--to", "saelens", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "format not recognised (found notes.txt)" in err and err.count("\n") == 1
    both = tmp_path / "both"
    saelens.save(make_dictionary(make_config("sae", "jumprelu")), both)
    (both / "params.npz").write_bytes(b"")
    assert main(["convert", str(both), "--to", "scope-hub", str(tmp_path / "o2")]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["convert", str(both), "--to", "onnx", str(tmp_path / "o3")]) == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err
    saelens.save(make_dictionary(make_config("sae", "jumprelu")), tmp_path / "ok")
    assert main(["convert", str(tmp_path / "ok"), "--to", "sparsify", str(tmp_path / "o4")]) == 1
    assert "cannot hold a jumprelu sae" in capsys.readouterr().err


def test_import_command_reports_and_exits_nonzero_on_failures(tmp_path, capsys):
    root = make_gs2_release(tmp_path)
    url = (tmp_path / "reg").as_uri()
    assert main(["--registry", url, "import", "gemma-scope-2", str(root), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert (
        "resid_post_all/layer_12_width_16k_l0_big -> google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_big_all"
        in out
        and "resid_post/banana -> FAILED" in out
    )
    assert main(["--registry", url, "import", "gemma-scope-2", str(root), "--include", "attn_out/*", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"] == {"published": 1}
    assert main(["--registry", url, "ls"]) == 0
    assert "attn_out/layer_9/width_16k/sae/l0_small" in capsys.readouterr().out


def test_parsing_the_commands_does_not_import_torch():
    code = (
        "import sys; from scope_hub.cli import main; "
        "rc = [main(['convert', '--help']), main(['import', '--help'])]; "
        "sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-500:]
    assert "gemma-scope-2" in result.stdout and "--to FORMAT" in result.stdout


def test_offline_import_of_an_uncached_hub_repo_says_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    code = main(["--registry", (tmp_path / "reg").as_uri(), "import", "gemma-scope-2", "google/gemma-scope-2-270m-pt"])
    err = capsys.readouterr().err
    assert code == 1 and "not in the Hugging Face cache" in err and "local_files_only" not in err
    assert "unset HF_HUB_OFFLINE" in err and "local release folder (see `scope-hub import --help`)" in err
