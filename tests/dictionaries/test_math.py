"""Every kind × activation against the independent NumPy reference (tests/reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scope_hub.dictionaries import SparseFeatures
from scope_hub.testing.dictionaries import ARCHS, SINGLE, make_config, make_dictionary, numpy_params
from tests import reference

ATOL = 1e-4  # float32 compute vs float64 reference on O(1) values


def _inputs(shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("architecture", ARCHS)
@pytest.mark.parametrize("type_", SINGLE)
def test_single_layer_kinds_match_numpy(type_, architecture):
    module = make_dictionary(make_config(type_, architecture)).eval()
    x = _inputs((2, 5, module.config.d_in))
    f_ref, y_ref = reference.single_layer(numpy_params(module), x.double().numpy(), architecture, k=3)
    f = module.encode(x)
    np.testing.assert_allclose(f.detach().numpy(), f_ref, atol=ATOL)
    np.testing.assert_allclose(module(x).detach().numpy(), y_ref, atol=ATOL)
    assert 0 < (f != 0).float().mean() < 1, "the test must exercise both active and inactive latents"
    target = _inputs((2, 5, module.config.d_out), seed=2)
    np.testing.assert_allclose(module.error(x, target).detach().numpy(), target.numpy() - y_ref, atol=ATOL)


@pytest.mark.parametrize("architecture", ARCHS)
def test_sparse_encode_and_decode_equal_dense(architecture):
    module = make_dictionary(make_config("sae", architecture)).eval()
    x = _inputs((3, 4, module.config.d_in))
    dense = module.encode(x)
    sparse = module.encode_sparse(x)
    assert isinstance(sparse, SparseFeatures)
    torch.testing.assert_close(sparse.to_dense(), dense)
    torch.testing.assert_close(module.decode(sparse), module.decode(dense), atol=1e-5, rtol=1e-5)
    if architecture == "topk":
        assert sparse.indices.shape[-1] == 3


def test_batchtopk_training_keeps_k_per_token_on_average_and_matches_numpy():
    module = make_dictionary(make_config("sae", "batchtopk", k=2)).train()
    x = _inputs((4, 6, module.config.d_in))
    f = module.encode(x)
    f_ref, _ = reference.single_layer(numpy_params(module), x.double().numpy(), "batchtopk", k=2, training=True)
    np.testing.assert_allclose(f.detach().numpy(), f_ref, atol=ATOL)
    assert int((f != 0).sum()) <= 2 * 24
    assert (f != 0).sum(-1).max() > (f != 0).sum(-1).min(), "batch top-k varies per token, unlike top-k"


def test_error_requires_target_for_transcoders():
    module = make_dictionary(make_config("transcoder", "relu"))
    with pytest.raises(ValueError, match="target"):
        module.error(torch.zeros(module.config.d_in))


@pytest.mark.parametrize("architecture", ["jumprelu", "relu", "topk"])
@pytest.mark.parametrize("affine", [False, True])
def test_clt_matches_numpy_and_never_sums_decoders(architecture, affine):
    module = make_dictionary(make_config("clt", architecture, affine_skip=affine)).eval()
    x = _inputs((2, 3, module.n_layers, module.config.d_in))
    f_ref, y_ref = reference.clt(numpy_params(module), x.double().numpy(), architecture, k=3)
    np.testing.assert_allclose(module.encode(x).detach().numpy(), f_ref, atol=ATOL)
    np.testing.assert_allclose(module(x).detach().numpy(), y_ref, atol=ATOL)
    # Layer-by-layer API (used by hooks during a forward) agrees with the batched one.
    feats = [module.encode_layer(i, x[..., i, :]) for i in range(module.n_layers)]
    last = module.n_layers - 1
    y_last = module.decode_layer(last, feats) + module.skip_layer(last, x[..., last, :])
    np.testing.assert_allclose(y_last.detach().numpy(), y_ref[..., last, :], atol=ATOL)


@pytest.mark.parametrize("architecture", ["jumprelu", "topk"])
def test_crosscoder_matches_numpy(architecture):
    module = make_dictionary(make_config("crosscoder", architecture)).eval()
    x = _inputs((2, 4, 3, module.config.d_in))
    f_ref, y_ref = reference.crosscoder(numpy_params(module), x.double().numpy(), architecture, k=3)
    np.testing.assert_allclose(module.encode(x).detach().numpy(), f_ref, atol=ATOL)
    np.testing.assert_allclose(module(x).detach().numpy(), y_ref, atol=ATOL)
    np.testing.assert_allclose(module.error(x).detach().numpy(), x.numpy() - y_ref, atol=ATOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_tracks_fp32(dtype):
    module = make_dictionary(make_config("sae", "relu"))
    low = make_dictionary(make_config("sae", "relu"), dtype=dtype)
    x = _inputs((7, module.config.d_in))
    y = low(x.to(dtype))
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), module(x), atol=0.15, rtol=0.05)


def test_constant_scale_normalization_is_applied_and_undone():
    cfg = make_config("sae", "relu", normalization={"kind": "constant_scale", "scale_in": 2.0, "scale_out": 2.0})
    module = make_dictionary(cfg)
    x = _inputs((5, cfg.d_in))
    p = numpy_params(module)
    f_ref, y_ref = reference.single_layer(p, 2.0 * x.double().numpy(), "relu")
    np.testing.assert_allclose(module.encode(x).detach().numpy(), f_ref, atol=ATOL)
    np.testing.assert_allclose(module(x).detach().numpy(), y_ref / 2.0, atol=ATOL)


@pytest.mark.parametrize("type_", ["sae", "clt"])
def test_matryoshka_truncation_keeps_prefix_groups(type_, tmp_path):
    cfg = make_config(type_, "jumprelu", d_sae=16, matryoshka_groups=[4, 4, 8])
    module = make_dictionary(cfg).eval()
    module.save_pretrained(tmp_path / "m")
    from scope_hub.dictionaries import Dictionary

    cut = Dictionary.from_pretrained(tmp_path / "m", matryoshka_groups=2)
    assert cut.config.d_sae == 8 and cut.config.matryoshka_groups == [4, 4]
    x = _inputs((3, cfg.n_layers, cfg.d_in) if type_ == "clt" else (3, cfg.d_in))
    torch.testing.assert_close(cut.encode(x), module.encode(x)[..., :8])
    with pytest.raises(ValueError, match="out of range"):
        Dictionary.from_pretrained(tmp_path / "m", matryoshka_groups=4)


def test_torch_free_layout_agrees_with_the_activation_table():
    from scope_hub.dictionaries import ACTIVATIONS
    from scope_hub.kinds import architectures_where

    assert {name for name, cls in ACTIVATIONS.items() if cls(k=1).uses_threshold} == set(
        architectures_where(stores_threshold=True)
    )
