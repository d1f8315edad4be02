"""Model specs resolve to folders or Hub ids as documented, offline included (no model is converted here)."""

from __future__ import annotations

import json

import huggingface_hub.constants
import pytest

from scope_hub import model_resolution
from scope_hub.errors import IntegrityError, OfflineError
from scope_hub.model_resolution import MARKER, describe_base, resolve_model
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
    assert resolve_model(plain) == str(plain) and resolve_model("org/other-model") == "org/other-model"
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
