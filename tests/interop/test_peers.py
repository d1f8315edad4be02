"""Features agree with each peer library's own forward: the real library where it is installed
(SAELens and sparsify are test dependencies; dictionary_learning is used when importable), and
independent references written from the peer's source otherwise (Gemma Scope, circuit-tracer:
its real loaders are checked by benchmarks/interop_circuit_tracer.py in their own venv)."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_np
from safetensors.torch import save_file

from scope_hub.interop import circuit_tracer, dictionary_learning, gemma_scope_1, gemma_scope_2, saelens, sparsify
from tests import reference
from tests.interop.cases import CASES, inputs


@pytest.fixture(scope="module")
def sae_lens():
    """Imported on first use only (~5 s), so an xdist worker that runs no SAELens test never pays it."""
    return pytest.importorskip("sae_lens")


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(a).float(), torch.as_tensor(b).float(), rtol=tol, atol=tol)


# --- SAELens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.fmt == "saelens"], ids=lambda c: c.id)
def test_saelens_loads_our_export_to_the_same_features(tmp_path, case, sae_lens):
    module = case.make()
    saelens.save(module, tmp_path / "out")
    theirs = sae_lens.SAE.load_from_disk(tmp_path / "out")
    x = inputs(module)
    assert torch.equal(theirs.encode(x), module.encode(x)), "features must be identical"
    _close(theirs(x), module(x))


def _random_(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(
                torch.rand(p.shape, generator=gen) * 0.4 + 0.05
                if name == "threshold"
                else torch.randn(p.shape, generator=gen) * 0.5
            )
    return module


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu", "jumprelu_skip_transcoder"])
def test_folders_saved_by_saelens_import_to_its_features(tmp_path, arch, sae_lens):
    SAE = sae_lens.SAE

    fields = {
        "d_in": 6,
        "d_sae": 16,
        "architecture": arch,
        "metadata": {"model_name": "gemma-2-2b", "hook_name": "blocks.3.hook_resid_post"},
    }
    if arch == "topk":
        fields.update(k=3, rescale_acts_by_decoder_norm=True)  # folded into the weights on import
    if arch.endswith("transcoder"):
        fields.update(d_out=8, apply_b_dec_to_input=False)
        fields["metadata"] = {"hook_name": "blocks.3.hook_mlp_in", "hook_name_out": "blocks.3.hook_mlp_out"}
    else:
        fields["apply_b_dec_to_input"] = True  # folded into b_enc on import
    theirs = _random_(SAE.from_dict(fields))
    theirs.save_model(tmp_path / "sl")
    ours = saelens.load(tmp_path / "sl")
    x = torch.randn(9, 6)
    _close(ours.encode(x), theirs.encode(x))
    _close(ours(x), theirs(x))
    c = ours.config
    if arch.endswith("transcoder"):
        assert (c.type, c.site, c.site_out, c.layer) == ("skip_transcoder", "mlp_in", "mlp_out", 3)
    else:
        assert (c.type, c.site, c.layer, c.model) == ("sae", "resid_post", 3, "google/gemma-2-2b")


# --- sparsify ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.fmt == "sparsify"], ids=lambda c: c.id)
def test_sparsify_loads_our_export_to_the_same_features(tmp_path, case):
    SparseCoder = pytest.importorskip("sparsify").SparseCoder
    module = case.make()
    sparsify.save(module, tmp_path / "layers.3")
    theirs = SparseCoder.load_from_disk(tmp_path / "layers.3")
    x = inputs(module)
    top = theirs.encode(x)
    dense = torch.zeros(x.shape[0], module.d_sae).scatter(-1, top.top_indices, top.top_acts)
    _close(dense, module.encode(x))
    _close(theirs(x).sae_out, module(x))


def test_folders_saved_by_sparsify_import_to_its_features(tmp_path):
    sp = pytest.importorskip("sparsify")
    theirs = _random_(sp.SparseCoder(6, sp.SparseCoderConfig(num_latents=16, k=3)))
    theirs.save_to_disk(tmp_path / "layers.4")
    (tmp_path / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m"}))
    ours = sparsify.load(tmp_path / "layers.4")
    x = torch.randn(9, 6)
    top = theirs.encode(x)
    _close(ours.encode(x), torch.zeros(9, 16).scatter(-1, top.top_indices, top.top_acts))
    c = ours.config
    assert (c.type, c.k, c.site, c.layer, c.model) == ("sae", 3, "resid_post", 4, "EleutherAI/pythia-70m")


# --- dictionary_learning -------------------------------------------------------------------------


def _dictionary_learning():
    """The real package's modules without running its __init__ (which needs nnsight)."""
    spec = importlib.util.find_spec("dictionary_learning")
    if spec is None or importlib.util.find_spec("einops") is None:
        pytest.skip("dictionary_learning is not importable (its PyPI deps would replace torch)")
    if "dictionary_learning" not in sys.modules:
        sys.modules["dictionary_learning"] = importlib.util.module_from_spec(spec)
    from dictionary_learning.dictionary import AutoEncoderNew, JumpReluAutoEncoder
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
    from dictionary_learning.trainers.top_k import AutoEncoderTopK

    return {c.__name__: c for c in (AutoEncoderNew, JumpReluAutoEncoder, BatchTopKSAE, AutoEncoderTopK)}


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk"])
def test_dictionary_learning_loads_our_export_to_the_same_features(tmp_path, arch):
    classes = _dictionary_learning()
    module = next(c for c in CASES if c.fmt == "dictionary-learning" and c.arch == arch).make()
    if arch == "batchtopk":
        with torch.no_grad():
            module.threshold.fill_(0.3)  # one global threshold: written as BatchTopKSAE
    dictionary_learning.save(module, tmp_path / "dl")
    trainer = json.loads((tmp_path / "dl" / "config.json").read_text())["trainer"]
    cls = classes[trainer["dict_class"]]
    theirs = cls.from_pretrained(str(tmp_path / "dl" / "ae.pt"), **({"k": trainer["k"]} if "k" in trainer else {}))
    x = inputs(module)
    _close(theirs.encode(x), module.encode(x))
    _close(theirs(x), module(x))


def test_dictionary_learning_standard_autoencoder_reference(tmp_path):
    """AutoEncoder (the default class) as its source defines it: relu((x - bias) @ W_e.T + b_e)."""
    g = torch.Generator().manual_seed(0)
    state = {
        "encoder.weight": torch.randn(16, 6, generator=g),
        "encoder.bias": torch.randn(16, generator=g),
        "decoder.weight": torch.randn(6, 16, generator=g),
        "bias": torch.randn(6, generator=g),
    }
    (tmp_path / "dl").mkdir()
    torch.save(state, tmp_path / "dl" / "ae.pt")
    (tmp_path / "dl" / "config.json").write_text(
        json.dumps(
            {
                "trainer": {
                    "dict_class": "AutoEncoder",
                    "lm_name": "EleutherAI/pythia-70m-deduped",
                    "layer": 3,
                    "submodule_name": "resid_post_layer_3",
                }
            }
        )
    )
    ours = dictionary_learning.load(tmp_path / "dl")
    x = torch.randn(9, 6, generator=g)
    f = torch.relu((x - state["bias"]) @ state["encoder.weight"].T + state["encoder.bias"])
    _close(ours.encode(x), f)
    _close(ours(x), f @ state["decoder.weight"].T + state["bias"])
    assert (ours.config.site, ours.config.layer) == ("resid_post", 3)


def test_dictionary_learning_never_unpickles(tmp_path):
    from tests.interop.release_fixtures import _Boom

    marker = tmp_path / "marker"
    (tmp_path / "dl").mkdir()
    torch.save({"encoder.weight": _Boom(marker)}, tmp_path / "dl" / "ae.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        dictionary_learning.load(tmp_path / "dl")
    assert not marker.exists()


# --- Gemma Scope and circuit-tracer: references from their documented math -----------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.fmt == "gemma-scope-2"], ids=lambda c: c.id)
def test_gemma_scope_2_files_compute_our_features(tmp_path, case):
    module = case.make()
    gemma_scope_2.save(module, tmp_path / "gs2")
    x = inputs(module).double().numpy()
    c = module.config
    if c.type == "clt":
        layers = [load_np(str(tmp_path / "gs2" / f"params_layer_{i}.safetensors")) for i in range(c.n_layers)]
        for i, p in enumerate(layers):  # written full-width: decoders into earlier layers are zero
            assert p["w_dec"].shape == (c.d_sae, c.n_layers, c.d_out) and not p["w_dec"][:, :i].any()
            p["w_dec"] = p["w_dec"][:, i:]
        f, y = reference.clt([{k: v.astype(np.float64) for k, v in p.items()} for p in layers], x, "jumprelu")
    elif c.type == "crosscoder":
        p = load_np(str(tmp_path / "gs2" / "params.safetensors"))
        n = c.n_layers
        assert p["w_enc"].shape == (n * c.d_in, c.d_sae)  # written concatenated over layers
        p = {
            **p,
            "w_enc": p["w_enc"].reshape(n, c.d_in, c.d_sae),
            "w_dec": p["w_dec"].reshape(c.d_sae, n, c.d_out),
            "b_dec": p["b_dec"].reshape(n, c.d_out),
        }
        f, y = reference.crosscoder({k: v.astype(np.float64) for k, v in p.items()}, x, "jumprelu")
    else:
        p = load_np(str(tmp_path / "gs2" / "params.safetensors"))
        f, y = reference.single_layer({k: v.astype(np.float64) for k, v in p.items()}, x, "jumprelu")
    _close(module.encode(torch.from_numpy(x).float()), f)
    _close(module(torch.from_numpy(x).float()), y, tol=1e-4)


def test_gemma_scope_1_npz_computes_our_features(tmp_path):
    module = next(c for c in CASES if c.fmt == "gemma-scope-1").make()
    gemma_scope_1.save(module, tmp_path / "gs1")
    with np.load(tmp_path / "gs1" / "params.npz", allow_pickle=False) as data:
        p = {k.lower(): data[k].astype(np.float64) for k in data.files}
    x = inputs(module).double().numpy()
    f, y = reference.single_layer(p, x, "jumprelu")
    _close(module.encode(torch.from_numpy(x).float()), f)
    _close(module(torch.from_numpy(x).float()), y, tol=1e-4)


def test_circuit_tracer_files_compute_our_features(tmp_path):
    """circuit-tracer 0.5.0: pre = x @ W_enc.T + b_enc; JumpReLU x * (x > threshold) (no relu: we clamp
    thresholds at 0 on export); out = f @ W_dec + b_dec + x @ W_skip.T."""
    module = next(c for c in CASES if c.fmt == "circuit-tracer" and c.type == "skip_transcoder").make()
    with torch.no_grad():
        module.threshold[:3] = -0.2  # negative thresholds: clamped on export, same function for us
    circuit_tracer.save(module, tmp_path / "ct")
    t = {k: v for k, v in load_np(str(tmp_path / "ct" / "layer_0.safetensors")).items()}
    x = inputs(module).numpy()
    pre = x @ t["W_enc"].T + t["b_enc"]
    f = pre * (pre > t["activation_function.threshold"])
    _close(module.encode(torch.from_numpy(x)), f)
    _close(module(torch.from_numpy(x)), f @ t["W_dec"] + t["b_dec"] + x @ t["W_skip"].T)


def test_circuit_tracer_clt_written_by_circuit_tracer_layout_imports(tmp_path):
    """The layout CrossLayerTranscoder.to_safetensors writes (no config.yaml)."""
    g = torch.Generator().manual_seed(0)
    n, d, s = 3, 6, 16
    w_enc = torch.randn(n, s, d, generator=g)
    b_enc, b_dec = torch.randn(n, s, generator=g), torch.randn(n, d, generator=g)
    thr = torch.rand(n, s, generator=g) * 0.5
    w_dec = [torch.randn(s, n - i, d, generator=g) for i in range(n)]
    for i in range(n):
        save_file(
            {f"W_enc_{i}": w_enc[i], f"b_enc_{i}": b_enc[i], f"b_dec_{i}": b_dec[i], f"threshold_{i}": thr[i]},
            str(tmp_path / f"W_enc_{i}.safetensors"),
        )
        save_file({f"W_dec_{i}": w_dec[i]}, str(tmp_path / f"W_dec_{i}.safetensors"))
    clt = circuit_tracer.load(tmp_path).eval()
    x = torch.randn(n, 5, d, generator=g)  # circuit-tracer's layout: [n_layers, n_pos, d_model]
    pre = torch.einsum("lbd,lfd->lbf", x, w_enc) + b_enc[:, None]
    f = pre * (pre > thr[:, None])
    _close(clt.encode(x.transpose(0, 1)).transpose(0, 1), f)
    out = torch.stack([b_dec[j] + sum(f[i] @ w_dec[i][:, j - i] for i in range(j + 1)) for j in range(n)])
    _close(clt(x.transpose(0, 1)).transpose(0, 1), out, tol=1e-4)
