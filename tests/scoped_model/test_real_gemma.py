"""ScopedModel on the real Gemma 3 270M (integration; the converted model is cached on disk)."""

from __future__ import annotations

import json

import pytest
import torch

from scope_hub.hooks import attached_hookpoints
from scope_hub.model_resolution import converted_sha256
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary

pytestmark = pytest.mark.integration

LAYER = 6
TEXTS = [
    "The quick brown fox jumps over the lazy dog because it wanted to see the river.",
    "In 1492, Columbus sailed across the Atlantic Ocean and reached the islands of the Caribbean.",
]


@pytest.fixture(scope="module")
def gemma(gemma3_270m):
    return gemma3_270m.model.eval(), gemma3_270m.tokenizer


def _batch(tokenizer):
    return tokenizer(TEXTS, return_tensors="pt", padding=True)


def _lm_loss(logits, batch):
    labels = batch.input_ids[:, 1:]
    mask = batch.attention_mask[:, 1:].bool()
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), labels, reduction="none")
    return float(losses[mask].mean())


def _random_sae(scale: float):
    sae = make_dictionary(make_config("sae", "jumprelu", d_in=640, d_sae=2048, site="resid_post", layer=LAYER))
    with torch.no_grad():
        sae.w_enc.mul_(0.05), sae.w_dec.mul_(scale), sae.b_dec.zero_()
    return sae.eval()


def test_real_gemma_observe_splice_and_delta_lm_loss(gemma):
    model, tokenizer = gemma
    batch = _batch(tokenizer)
    sae = _random_sae(scale=10.0)
    sm = ScopedModel.from_pretrained(model, dictionaries={"sae": sae})
    with torch.no_grad():
        bare = model(**batch, output_hidden_states=True)
        out, cache = sm.run_with_cache(**batch)
        assert torch.equal(out.logits, bare.logits)
        mask = batch.attention_mask[..., None]
        torch.testing.assert_close(cache["sae"], sae.encode(bare.hidden_states[LAYER + 1]) * mask, rtol=0, atol=0)

        base_loss = _lm_loss(bare.logits, batch)
        with sm.splice(error_term=True):
            exact = sm(**batch).logits
        with sm.splice():
            broken = sm(**batch).logits
    assert 1.0 < base_loss < 8.0, f"the real model should predict English text reasonably (loss {base_loss:.2f})"
    # Gemma's residual norms are ~1e2-1e3, so fp32 rounding of recon + (act - recon) is ~1e-4 at the site.
    assert abs(_lm_loss(exact, batch) - base_loss) < 1e-3
    torch.testing.assert_close(exact, bare.logits, rtol=1e-3, atol=1e-2)
    assert _lm_loss(broken, batch) - base_loss > 1.0, "splicing a random dictionary must hurt the loss a lot"
    assert attached_hookpoints(model) == []


def test_real_gemma_transcoder_error_term_and_steered_generation(gemma):
    model, tokenizer = gemma
    batch = _batch(tokenizer)
    cfg = make_config(
        "skip_transcoder", "relu", d_in=640, d_out=640, d_sae=1024, site="mlp_in", site_out="mlp_out", layer=LAYER
    )
    tc = make_dictionary(cfg).eval()
    sm = ScopedModel.from_pretrained(model, dictionaries={"tc": tc, "sae": _random_sae(scale=1.0)})
    with torch.no_grad():
        bare = model(**batch).logits
        with sm.splice("tc", error_term=True):
            assert abs(_lm_loss(sm(**batch).logits, batch) - _lm_loss(bare, batch)) < 1e-3

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    kwargs = dict(max_new_tokens=6, do_sample=False)
    plain = sm.generate(**prompt, **kwargs)
    steered = sm.steer("sae", 7, 400.0).generate(**prompt, **kwargs)
    again = sm.steer("sae", 7, 400.0).generate(**prompt, **kwargs)
    assert torch.equal(steered, again) and not torch.equal(steered, plain)
    assert torch.equal(sm.generate(**prompt, **kwargs), plain)


def test_saved_scoped_model_pins_the_converted_base_portably(gemma, tmp_path):
    model, tokenizer = gemma
    sm = ScopedModel.from_pretrained(model, dictionaries={"sae": _random_sae(scale=1.0)})
    config = json.loads((sm.save_pretrained(tmp_path / "scoped") / "scoped_model.json").read_text())
    # a machine path would not rebuild elsewhere: the converted model's name and its GGUF's sha256 do
    assert config["base_model"] == "gemma-3-270m"
    assert config["base_model_revision"] == converted_sha256(model.config._name_or_path)
    rebuilt = ScopedModel.from_pretrained(tmp_path / "scoped")
    batch = _batch(tokenizer)
    with torch.no_grad(), sm.splice(), rebuilt.splice():
        torch.testing.assert_close(rebuilt(**batch).logits, sm(**batch).logits, rtol=0, atol=0)


def test_the_hub_id_loads_model_and_tokenizer_offline_without_retries(gemma, monkeypatch, capfd):
    import huggingface_hub.constants

    from scope_hub import model_resolution

    _, tokenizer = gemma
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(model_resolution, "_in_hf_cache", lambda repo, revision: False)
    sm = ScopedModel.from_pretrained("google/gemma-3-270m")
    expected = tokenizer(TEXTS, return_tensors="pt", padding=True).input_ids
    assert torch.equal(sm.to_tokens(TEXTS), expected)
    assert sm.to_str_tokens("Hello world") == ["<bos>", "Hello", " world"]
    assert sm.base_model_id == "gemma-3-270m" and "Retrying" not in "".join(capfd.readouterr())
