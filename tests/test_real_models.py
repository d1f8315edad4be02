"""Integration: the real Gemma 3 270M (and SmolLM2-135M-Instruct) converted from PyPI GGUFs, hookpoints and hooks on them."""

from __future__ import annotations

import json

import pytest
import torch

from scope_hub.gguf_models import MARKER
from scope_hub.hookpoints import adapter_for
from scope_hub.hooks import attached_hookpoints, capture, stop_after
from tests.test_hookpoints import GEMMA3_270M_WIDTHS

pytestmark = pytest.mark.integration

LAYER = 6
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Interpretability research studies the internals of models."]


@pytest.fixture(scope="module")
def batch(gemma3_270m):
    return gemma3_270m.tokenizer(TEXTS, return_tensors="pt", padding=True)


def test_converted_folder_reloads_fast_and_reproduces_the_gguf_logits(gemma3_270m) -> None:
    from transformers import AutoModelForCausalLM

    marker = json.loads((gemma3_270m.path / MARKER).read_text())
    check = marker["verification"]
    assert check["max_abs_logit_diff"] == 0.0  # checked bit-exact against the GGUF-loaded model at conversion
    assert "quantization_config" not in json.loads((gemma3_270m.path / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(gemma3_270m.path).eval()  # seconds, vs ~40 s through GGUF
    ids = torch.tensor([check["input_ids"]])
    assert gemma3_270m.tokenizer(check["text"]).input_ids == check["input_ids"]
    with torch.no_grad():
        logits = model(ids).logits[0]
    # The reference was computed in another process (maybe another thread count): allow float reordering noise.
    assert torch.allclose(logits[:, :8], torch.tensor(check["logits_slice"]), atol=1e-3, rtol=1e-4)
    assert logits.topk(5, dim=-1).indices.tolist() == check["top5"]


def test_gemma3_270m_adapter_facts(gemma3_270m) -> None:
    adapter = adapter_for(gemma3_270m.model)
    assert (adapter.family, adapter.n_layers, adapter.d_model, adapter.n_heads, adapter.head_dim) == (
        "gemma3",
        18,
        640,
        4,
        256,
    )
    assert {s: adapter.site_width(s) for s in adapter.sites} == GEMMA3_270M_WIDTHS
    assert str(adapter.hookpoint("attn_out", LAYER)) == "model.layers.6.self_attn.o_proj.input"


def test_capture_at_layer_6(gemma3_270m, batch) -> None:
    model = gemma3_270m.model
    adapter = adapter_for(model)
    hps = {s: adapter.hookpoint(s, LAYER) for s in adapter.sites}
    attn = adapter.attn_residual(LAYER)
    with torch.no_grad(), capture(model, [*hps.values(), attn]) as got:
        out = model(**batch, output_hidden_states=True)
    act = {s: got[str(hp)] for s, hp in hps.items()}
    n_tokens = batch.input_ids.shape
    for site, tensor in act.items():
        assert tensor.shape == (*n_tokens, adapter.site_width(site)), site
        assert torch.isfinite(tensor).all(), site
    assert torch.equal(act["resid_pre"], out.hidden_states[LAYER])
    assert torch.equal(act["resid_post"], out.hidden_states[LAYER + 1])
    update = act["resid_post"] - act["resid_pre"]
    scale = update.abs().max()
    assert ((act["mlp_out"] + got[str(attn)]) - update).abs().max() <= 1e-5 * scale
    x = act["mlp_in"]
    with torch.no_grad():
        for path in adapter.mlp_block(LAYER).modules:
            x = model.get_submodule(path)(x)
    assert torch.allclose(x, act["mlp_out"], atol=1e-4 * float(act["mlp_out"].abs().max()))


def test_stop_after_layer_6_matches_the_full_forward_and_skips_the_rest(gemma3_270m, batch) -> None:
    model = gemma3_270m.model
    adapter = adapter_for(model)
    hps = [adapter.hookpoint(s, LAYER) for s in adapter.sites]
    stop = adapter.stop_hookpoint(hps)
    assert str(stop) == "model.layers.6.output"

    def run(early: bool) -> dict:
        with torch.no_grad(), capture(model, hps) as got:
            if early:
                with stop_after(model, stop) as result:
                    model(**batch)
                assert result.stopped
            else:
                model(**batch)
        return got

    ran: list[str] = []
    handle = model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head"))
    try:
        early = run(True)
    finally:
        handle.remove()
    full = run(False)
    for hp in hps:
        assert torch.equal(early[str(hp)], full[str(hp)]), hp
    assert ran == [], "the 262k-vocab unembedding must not run when stopping after layer 6"
    assert attached_hookpoints(model) == []


def test_smollm2_135m_instruct(smollm2_135m_instruct) -> None:
    model, tok = smollm2_135m_instruct.model, smollm2_135m_instruct.tokenizer
    adapter = adapter_for(model)
    assert (type(model).__name__, adapter.n_layers, adapter.d_model, adapter.site_width("attn_out")) == (
        "LlamaForCausalLM",
        30,
        576,
        576,
    )
    assert json.loads((smollm2_135m_instruct.path / MARKER).read_text())["verification"]["max_abs_logit_diff"] == 0.0
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt.input_ids.shape[1] :])
