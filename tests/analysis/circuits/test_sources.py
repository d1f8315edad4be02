"""Dictionaries from everywhere: Gemma Scope 2 folders (transcoder/ and clt/ layouts), the registry, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from scope_hub.analysis.circuits.attribution import attribute
from scope_hub.cli import main
from scope_hub.dictionaries import CrossLayerTranscoder, Dictionary, SkipTranscoder
from scope_hub.registry import Registry
from scope_hub.testing.tiny_models import tiny_model
from tests.analysis.circuits.helpers import IDS, dictionaries, trace_command

D, D_SAE = 64, 16
HOOK_IN = "model.layers.{}.pre_feedforward_layernorm.output"
HOOK_OUT = "model.layers.{}.post_feedforward_layernorm.output"


def _gs2_tensors(rng, n_out: int | None = None, skip: bool = False) -> dict[str, np.ndarray]:
    w_dec_shape = (D_SAE, D) if n_out is None else (D_SAE, n_out, D)
    t = {
        "w_enc": rng.standard_normal((D, D_SAE)) * 0.3,
        "b_enc": rng.standard_normal(D_SAE) * 0.1,
        "threshold": np.full(D_SAE, 0.2),
        "w_dec": rng.standard_normal(w_dec_shape) * 0.05,
        "b_dec": rng.standard_normal(D) * 0.02,
    }
    if skip:
        t["affine_skip_connection"] = rng.standard_normal((D, D)) * 0.02
    return {k: v.astype(np.float32) for k, v in t.items()}


def write_gs2_transcoder(folder, layer: int, seed: int, affine: bool = False):
    """A folder as Gemma Scope 2 publishes ``transcoder_all/layer_{L}_width_16k_l0_small[_affine]``."""
    folder.mkdir(parents=True)
    config = {
        "architecture": "jump_relu",
        "hf_hook_point_in": HOOK_IN.format(layer),
        "hf_hook_point_out": HOOK_OUT.format(layer),
        "width": D_SAE,
        "model_name": "gemma-v3-270m-pt",
        "l0": 10,
        "affine_connection": affine,
        "type": "transcoder",
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(_gs2_tensors(np.random.default_rng(seed), skip=affine), str(folder / "params.safetensors"))
    return folder


def write_gs2_clt(folder, n_layers: int = 3, seed: int = 0):
    """A folder as Gemma Scope 2 publishes ``clt/width_262k_l0_medium_affine`` (full-width decoders)."""
    folder.mkdir(parents=True)
    config = {
        "architecture": "jump_relu",
        "hf_hook_point_in": HOOK_IN.format(0),
        "hf_hook_point_out": HOOK_OUT.format(0),
        "width": D_SAE,
        "model_name": "gemma-v3-270m-pt",
        "l0": 10,
        "affine_connection": True,
        "type": "clt",
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    for i in range(n_layers):
        t = _gs2_tensors(rng, n_out=n_layers, skip=True)
        t["w_dec"][:, :i] = 0  # a layer decodes only into itself and later layers
        save_file(t, str(folder / f"params_layer_{i}.safetensors"))
    return folder


def test_gemma_scope_2_transcoder_folders(tmp_path):
    folders = [
        write_gs2_transcoder(
            tmp_path / f"transcoder_all/layer_{L}_width_16k_l0_small{'_affine' * (L == 1)}", L, seed=L, affine=L == 1
        )
        for L in range(3)
    ]
    loaded = [Dictionary.from_pretrained(f) for f in folders]
    assert isinstance(loaded[1], SkipTranscoder) and loaded[0].config.hook_point_out == HOOK_OUT.format(0)
    graph = attribute(IDS, tiny_model("gemma3"), [str(f) for f in folders], max_feature_nodes=None)
    assert graph.n_features > 10 and graph.relative_completeness_error() < 1e-4
    assert graph.dictionaries == [f.name for f in folders]


def test_gemma_scope_2_clt_folder(tmp_path):
    folder = write_gs2_clt(tmp_path / "clt/width_16_l0_medium_affine")
    clt = Dictionary.from_pretrained(folder)
    assert isinstance(clt, CrossLayerTranscoder) and clt.config.layers == [0, 1, 2]
    graph = attribute(IDS, tiny_model("gemma3"), [clt], max_feature_nodes=None)
    assert graph.relative_completeness_error() < 1e-4
    assert set(graph.features[:, 0].tolist()) == {0, 1, 2}


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPE_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CI", "1")
    for name in ("SCOPE_HUB_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    url = (tmp_path / "registry").as_uri()
    reg = Registry(url)
    for L, tc in enumerate(dictionaries("transcoder", "jumprelu", dtype=torch.float32)):
        tc.config.model = "tiny-gemma3"  # a card needs a base model and a license
        reg.push(
            tc.save_pretrained(tmp_path / f"tc{L}"),
            f"tiny-gemma3:mlp/layer_{L}/width_16/transcoder",
            license="apache-2.0",
        )
    return url


def test_registry_keys(registry):
    keys = [f"tiny-gemma3:mlp/layer_{L}/width_16/transcoder@v1" for L in range(3)]
    graph = attribute(IDS, tiny_model("gemma3"), keys, registry=registry, max_feature_nodes=None)
    assert graph.dictionaries == ["mlp_0", "mlp_1", "mlp_2"]  # keys in a list get their short {site}_{layer} names
    assert graph.relative_completeness_error() < 1e-4


def test_cli_trace_with_a_key_pattern(registry, model_folder, tmp_path, capsys):
    out = tmp_path / "graphs" / "hello.json"
    pattern = "tiny-gemma3:mlp/layer_*/width_16/transcoder"
    code = main(
        [
            "--registry",
            registry,
            *trace_command(model_folder, pattern, out),
            "--html",
            str(tmp_path / "g.html"),
            "--save-graph",
            str(tmp_path / "g.pt"),
            "--max-feature-nodes",
            "0",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads(out.read_text())
    assert data["metadata"]["slug"] == "hello" and data["metadata"]["scan"].startswith("custom-")
    assert len(data["metadata"]["transcoder_list"]) == 3
    assert (out.parent / "graph-metadata.json").is_file() and (tmp_path / "g.html").is_file()
    assert "completeness max |residual|" in capsys.readouterr().out


def test_cli_trace_with_folders_and_targets(model_folder, tmp_path, capsys):
    parent = tmp_path / "set"
    for L, tc in enumerate(dictionaries("skip_transcoder", "topk", dtype=torch.float32)):
        tc.save_pretrained(parent / f"layer_{L}")
    out = tmp_path / "t.json"
    options = ("--target", "l", "--target", "d", "--quiet", "--node-threshold", "0.9")
    code = main(trace_command(model_folder, parent, out, *options))
    assert code == 0, capsys.readouterr().err
    logits = [n for n in json.loads(out.read_text())["nodes"] if n["feature_type"] == "logit"]
    assert [n["feature"] for n in logits] == [ord("l"), ord("d")]


def test_cli_errors_are_one_line(model_folder, tmp_path, capsys):
    code = main(["trace", "x", "--model", str(model_folder), "--transcoders", str(tmp_path), "--out", "o.json"])
    assert code == 2 and "no config.json" in capsys.readouterr().err
