"""Spellings users bring from the field (SAELens's ``W_enc``, ``stop_at_layer``) and the README's return values."""

from __future__ import annotations

import pytest
import torch

from scope_hub.dictionaries.sparse import SparseFeatures
from scope_hub.errors import ArgumentError
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing import make_config, make_dictionary, tiny_llama


def test_saelens_weight_names_are_the_same_tensors():
    sae = make_dictionary(make_config("sae", "jumprelu"))
    assert sae.W_enc is sae.w_enc and sae.W_dec is sae.w_dec


def test_encode_sparse_returns_what_the_readme_says():
    sae = make_dictionary(make_config("sae", "topk", d_in=6, d_sae=16, k=3))
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(0))
    sparse = sae.encode_sparse(x)
    assert isinstance(sparse, SparseFeatures) and sparse.d_sae == 16 and sparse.indices.shape[:-1] == (2, 5)
    torch.testing.assert_close(sae.decode(sparse), sae(x), rtol=1e-5, atol=1e-6)


def test_stop_at_layer_runs_only_the_layers_before_it():
    model = tiny_llama()
    width = model.config.hidden_size
    sae = make_dictionary(make_config("sae", "relu", d_in=width, site="resid_post", layer=0))
    late = make_dictionary(make_config("sae", "relu", d_in=width, site="resid_post", layer=1), seed=1)
    sm = ScopedModel.from_pretrained(model, dictionaries={"early": sae, "late": late})
    ids = torch.tensor([[1, 5, 9, 4]])
    _, full = sm.run_with_cache(ids)
    outputs, cache = sm.run_with_cache(ids, stop_at_layer=1)
    assert outputs is None and set(cache) == {"early"}  # layer 1 never ran
    torch.testing.assert_close(cache["early"], full["early"])
    with pytest.raises(ArgumentError, match="stop_at_layer=7"):
        sm.run_with_cache(ids, stop_at_layer=7)
