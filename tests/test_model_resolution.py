"""Model specs resolve to folders or Hub ids as documented, offline included (no model is converted here)."""

from __future__ import annotations

import json
import time

import huggingface_hub.constants
import pytest

from scope_hub import model_resolution
from scope_hub.errors import IntegrityError, ModelNotFoundError, OfflineError
from scope_hub.gguf_models import MARKER
from scope_hub.model_resolution import describe_base, resolve_model
from scope_hub.scoped_model import ScopedModel

SHA = "ab" * 32


@pytest.fixture
def converted(tmp_path, monkeypatch):
    """A stand-in converted folder for gemma-3-270m, and an HF cache that holds nothing."""
    folder = tmp_path / "gemma-3-270m"
    folder.mkdir()
    (folder / MARKER).write_text(json.dumps({"name": "gemma-3-270m", "source_sha256": SHA}))
    monkeypatch.setitem(model_resolution.CONVERTERS, "gemma-3-270m", lambda progress=False: folder)
    monkeypatch.setattr(model_resolution, "_in_hf_cache", lambda repo, revision: False)
    return folder


def test_names_and_uncached_hub_ids_resolve_to_the_converted_folder(converted, tmp_path):
    assert resolve_model("gemma-3-270m") == resolve_model("google/gemma-3-270m") == str(converted)
    assert resolve_model("gemma-3-270m", revision=SHA) == str(converted)
    with pytest.raises(IntegrityError, match="pinned to GGUF sha256 " + "0" * 64):
        resolve_model("gemma-3-270m", revision="0" * 64)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert resolve_model(plain) == str(plain)
    # portable identity: a converted folder is its name + GGUF hash, any other folder its path
    assert describe_base(str(converted), None) == ("gemma-3-270m", SHA)
    assert describe_base(str(plain), "r1") == (str(plain), "r1")


def test_cached_hub_ids_load_from_the_hf_cache(converted, monkeypatch):
    monkeypatch.setattr(model_resolution, "_in_hf_cache", lambda repo, revision: True)
    assert resolve_model("google/gemma-3-270m") == "google/gemma-3-270m"


def test_an_unreachable_hub_id_is_a_typed_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OfflineError, match="not in the Hugging Face cache.*gemma-3-270m"):
        ScopedModel.from_pretrained("no-such-org/no-such-model")


def test_a_converted_copy_standing_in_for_a_hub_id_warns_once_and_is_recorded(converted, tmp_path, monkeypatch):
    import warnings

    from scope_hub.model_resolution import ConvertedWeightsWarning
    from scope_hub.scoped_config import ScopedModelConfig, save_scoped_config
    from scope_hub.testing.tiny_models import tiny_gemma3

    monkeypatch.setattr(model_resolution, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            resolve_model("google/gemma-3-270m")
        resolve_model("gemma-3-270m")  # asked for the converted copy by name: nothing to warn about
    (warning,) = [w for w in caught if issubclass(w.category, ConvertedWeightsWarning)]
    assert "Q4_K_M" in str(warning.message) and "dequantized" in str(warning.message)
    model = tiny_gemma3()
    model.config._name_or_path = str(converted)  # what transformers records when loading the folder
    saved = save_scoped_config(ScopedModel(model), tmp_path / "scoped")
    config = ScopedModelConfig.read(saved)
    assert (config.base_model, config.base_model_revision) == ("gemma-3-270m", SHA)
    assert config.base_model_weights == {
        "hub_id": "google/gemma-3-270m",
        "format": "gguf",
        "quantization": "Q4_K_M",
        "gguf_sha256": SHA,
        "dequantized_to": "float32",
    }
    plain = tiny_gemma3()
    plain.config._name_or_path = "org/some-model"
    assert ScopedModelConfig.read(save_scoped_config(ScopedModel(plain), tmp_path / "p")).base_model_weights is None


def test_a_dictionary_trained_on_the_converted_copy_names_the_hub_model_and_the_gguf(converted, monkeypatch):
    from scope_hub.cards import parse_card, render_dictionary_card
    from scope_hub.dictionaries import SAE
    from scope_hub.metadata import DictionaryConfig
    from trainers.config import load_config
    from trainers.publish import export_dictionary
    from trainers.trainer import TrainResult

    monkeypatch.setenv("SCOPE_HUB_MODELS", str(converted.parent))  # where the converted copy lives
    cfg = load_config(None, ["model.id=google/gemma-3-270m", "harvest.layer=6", "dictionary.d_sae=8"])
    sae = SAE(DictionaryConfig(type="sae", architecture="jumprelu", d_in=4, d_sae=8, model=cfg.model.id, layer=6))
    exported = export_dictionary(TrainResult(sae, [1.0], [1.0], 1, False), cfg, {"model_revision": None})
    assert exported.config.model == "google/gemma-3-270m" and exported.config.model_revision is None
    weights = exported.config.provenance.model_weights
    assert (weights["quantization"], weights["gguf_sha256"], weights["format"]) == ("Q4_K_M", SHA, "gguf")
    card = render_dictionary_card(exported.config, "google/gemma-3-270m:resid_post/layer_6/width_8/sae", 1)
    front, body = parse_card(card)
    assert front["base_model"] == "google/gemma-3-270m" and front["scope_hub"]["base_model_weights"] == weights
    assert "converted local copy" in body and SHA in body


@pytest.mark.parametrize("spec", ["/no/such/folder", "./no/such", "~/no-such-model-dir", "a/b/c"])
def test_a_path_that_names_no_folder_says_so_without_asking_the_hub(spec, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # any request would fail
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        ScopedModel.from_pretrained(spec)


def test_an_unreachable_hub_fails_after_one_attempt_without_retry_noise(monkeypatch, capfd):
    # Port 9 refuses connections: transformers alone would retry for ~25 s with a line per retry.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(OfflineError, match="Hub is offline or unreachable.*gemma-3-270m"):
        ScopedModel.from_pretrained("google/gemma-3-27")
    assert time.monotonic() - started < 5
    assert "Retrying" not in "".join(capfd.readouterr())


def test_a_misspelt_hub_id_is_reported_by_the_hub_before_any_download(monkeypatch):
    from tests.registry.fake_hub import FakeHub

    hub = FakeHub().start()
    try:
        hub.create_repo("org/real-model")
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        assert resolve_model("org/real-model") == "org/real-model"
        with pytest.raises(ModelNotFoundError, match="no model 'org/real-modle' on the Hub"):
            resolve_model("org/real-modle")
        assert [path for _, path in hub.requests] == ["/api/models/org/real-model", "/api/models/org/real-modle"]
    finally:
        hub.stop()


@pytest.mark.parametrize("command", ["dashboard", "trace"])
def test_analysis_commands_say_a_model_folder_does_not_exist(command, tmp_path, capsys):
    from scope_hub.cli import main
    from scope_hub.testing.dictionaries import make_config, make_dictionary

    sae = tmp_path / "sae"
    make_dictionary(make_config("sae", "relu", d_in=8, d_sae=16, site="resid_post", layer=0)).save_pretrained(sae)
    out = str(tmp_path / "out")
    args = {
        "dashboard": ["dashboard", str(sae), "--model", "/no/such/folder", "--out", out],
        "trace": ["trace", "The capital", "--model", "/no/such/folder", "--transcoders", str(sae), "--out", out],
    }[command]
    started = time.monotonic()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "/no/such/folder: no such folder" in err and "Repo id" not in err, err
    assert time.monotonic() - started < 10
