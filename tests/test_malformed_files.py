"""Hostile or contradictory files are typed scope-hub errors naming what is wrong, never bare builtins."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import yaml

from scope_hub.analysis.circuits.graph import Graph
from scope_hub.cli import main
from scope_hub.config_io import read_config
from scope_hub.errors import ConfigError, GraphFileError, ScopeHubError, WeightsFileError
from scope_hub.interop import circuit_tracer, gemma_scope_2
from scope_hub.loading import load_dictionary
from scope_hub.registry import Registry
from tests.interop.release_fixtures import S, gs2_config, gs2_tensors
from tests.registry.helpers import KEY, make_dictionary


def _gs2_folder(root, width):
    from safetensors.torch import save_file

    folder = root / "gemma-scope-2-270m-pt" / "resid_post" / "layer_12_width_16k_l0_small"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**gs2_config("model.layers.12.output"), "width": width}))
    save_file(gs2_tensors(1), str(folder / "params.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper"),
        ("[" * 100_000, "nested deeper"),
        ('{"d_in": 9' + "9" * 5000 + "}", "thousands of digits"),
    ],
)
def test_hostile_config_json_is_a_config_error_on_load_and_push(text, needle, tmp_path, capsys):
    folder = make_dictionary(tmp_path / "d")
    (folder / "config.json").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        read_config(folder)
    with pytest.raises(ConfigError, match=needle):
        load_dictionary(folder)
    url = (tmp_path / "reg").as_uri()
    with pytest.raises(ConfigError, match=needle):
        Registry(url, cache_dir=tmp_path / "c").push(folder, KEY)
    assert main(["--registry", url, "push", str(folder), KEY]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "internal error" not in err


@pytest.mark.parametrize("width", [999, "999", "1m"])
def test_gemma_scope_2_width_that_contradicts_the_tensors_is_refused_on_load_and_import(width, tmp_path):
    folder = _gs2_folder(tmp_path, width)
    for load in (read_config, load_dictionary, gemma_scope_2.load):
        with pytest.raises(ConfigError, match=rf"'width' says {width!r} but params.safetensors holds {S} latents"):
            load(folder)
    report = gemma_scope_2.import_gemma_scope_2(tmp_path / "gemma-scope-2-270m-pt", (tmp_path / "reg").as_uri())
    assert [r.status for r in report.results] == ["failed"] and str(S) in report.failed[0].reason
    assert Registry((tmp_path / "reg").as_uri(), cache_dir=tmp_path / "c").list() == []


@pytest.mark.parametrize("width", [S, str(S), None])
def test_gemma_scope_2_width_that_agrees_loads(width, tmp_path):
    folder = _gs2_folder(tmp_path, width)
    assert read_config(folder).d_sae == S


def test_circuit_tracer_npz_with_object_arrays_is_a_weights_file_error(tmp_path):
    d_model = 4
    arrays = {
        "W_enc": np.zeros((d_model, 8), np.float32),
        "W_dec": np.zeros((8, d_model), np.float32),
        "b_enc": np.zeros(8, np.float32),
        "b_dec": np.array([{"not": "numbers"}] * d_model, dtype=object),
    }
    np.savez(tmp_path / "layer_0.npz", **arrays)
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_kind": "transcoder_set",
                "model_name": "google/gemma-2-2b",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "mlp.hook_out",
                "transcoders": ["layer_0.npz"],
            }
        )
    )
    with pytest.raises(WeightsFileError, match="layer_0.npz"):
        circuit_tracer.load(tmp_path)


def test_graph_load_refuses_a_pickle_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    (tmp_path / "graph.pt").write_bytes(pickle.dumps({"prompt": Payload()}))
    with pytest.raises(GraphFileError, match="never run"):
        Graph.load(tmp_path / "graph.pt")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(GraphFileError):
        Graph.load(tmp_path / "junk.pt")
    with pytest.raises(GraphFileError, match="no such graph file"):
        Graph.load(tmp_path / "missing.pt")


@pytest.mark.parametrize("tail", ["a" * 300, "v" + "9" * 300, "sha256:" + "f" * 300])
def test_an_over_long_ref_is_a_key_error_not_an_os_error(tail, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = (tmp_path / "reg").as_uri()
    reg = Registry(url, cache_dir=tmp_path / "c")
    reg.push(make_dictionary(tmp_path / "d"), KEY)
    reg.pull(KEY)  # a warm cache: the ref is looked up locally first
    with pytest.raises(ScopeHubError, match="bad ref"):
        load_dictionary(f"{KEY}@{tail}", registry=reg)
    assert main(["--registry", url, "pull", f"{KEY}@{tail}"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
