"""The recipe of docs/architecture.md: a new kind is one file plus one table entry, and everything finds it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scope_hub import kinds
from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.errors import ConfigError
from scope_hub.keys import parse_key
from scope_hub.metadata import DictionaryConfig
from scope_hub.tensor_layout import check_folder
from scope_hub.testing import check_dictionary_kind
from tests.dictionaries import toy_kind


@pytest.fixture
def toy():
    kinds.register_kind(toy_kind.ENTRY)
    try:
        yield toy_kind.ENTRY
    finally:
        kinds.unregister_kind(toy_kind.ENTRY.name)


def _numpy_forward(module: Dictionary, x: np.ndarray) -> np.ndarray:
    p = {n: t.detach().double().numpy() for n, t in module.named_parameters()}
    pre = x @ p["w_enc"] + p["b_enc"]
    f = np.maximum(pre, 0)
    top = np.argsort(-f, axis=-1)[:, : module.config.k]
    kept = np.zeros_like(f)
    np.put_along_axis(kept, top, np.take_along_axis(f, top, -1), -1)
    w_dec = p["w_dec"] / np.linalg.norm(p["w_dec"], axis=-1, keepdims=True)
    return kept @ w_dec + p["b_dec"]


def test_a_registered_kind_is_found_by_config_keys_layout_and_loading(toy, tmp_path):
    config = DictionaryConfig(type=toy.name, architecture="topk", k=2, d_in=5, d_sae=12, site="resid_post", layer=1)
    assert parse_key(f"m:resid_post/layer_1/width_12/{toy.name}").type == toy.name
    module = KINDS[toy.name](config)
    assert type(module).__name__ == "NormedDecoderSAE"
    torch.nn.init.normal_(module.w_dec, std=3.0)  # rows far from unit norm, so normalising matters
    torch.nn.init.normal_(module.b_dec)
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    expected = _numpy_forward(module, x.double().numpy())
    np.testing.assert_allclose(module(x).detach().double().numpy(), expected, rtol=1e-4, atol=1e-5)

    module.save_pretrained(tmp_path / "toy")
    assert check_folder(tmp_path / "toy").type == toy.name  # the torch-free check the registry runs at push
    for lazy in (False, True):
        loaded = Dictionary.from_pretrained(tmp_path / "toy", lazy=lazy)
        assert type(loaded) is type(module)
        np.testing.assert_allclose(loaded(x).detach().double().numpy(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded.error(x), x - loaded(x))  # reconstructs_input: target defaults to x


def test_the_toy_kind_passes_the_kind_suite(toy, tmp_path):
    check_dictionary_kind(toy.name, tmp_path)


@pytest.mark.parametrize("type_", list(kinds.KINDS))
def test_every_built_in_kind_passes_the_kind_suite(type_, tmp_path):
    check_dictionary_kind(type_, tmp_path)


def test_an_unregistered_kind_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="use one of: sae, transcoder"):
        DictionaryConfig(type=toy_kind.ENTRY.name, architecture="relu", d_in=4, d_sae=8)
    with pytest.raises(ConfigError) as info:
        kinds.kind(toy_kind.ENTRY.name)
    assert info.value.choices == tuple(kinds.KINDS) and info.value.field == "type"
    with pytest.raises(ConfigError, match="already registered"):
        kinds.register_kind(kinds.KINDS["sae"])
