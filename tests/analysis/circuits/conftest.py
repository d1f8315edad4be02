"""Fixtures shared by the circuit-tracing tests."""

from __future__ import annotations

import pytest

from scope_hub.testing.tiny_models import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A saved tiny Gemma 3 with its tokenizer: what ``scope-hub trace --model`` loads."""
    folder = tmp_path_factory.mktemp("tiny-gemma3")
    tiny_model("gemma3").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder
