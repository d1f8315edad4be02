"""Hookpoint adapters: the reusable suite on a tiny model of every family, plus resolution facts."""

from __future__ import annotations

import pytest
from transformers import BertConfig, Gemma3TextConfig

from scope_hub.errors import HookpointError, UnsupportedModelError
from scope_hub.hookpoints import ADAPTERS, Hookpoint, adapter_for, resolve_hookpoint, supported_model_types
from scope_hub.testing.adapters import AdapterSuite
from scope_hub.testing.tiny_models import tiny_model


# Parallel on purpose: one AdapterSuite subclass per tiny model, the documented way to test an adapter.
class TestGemma3(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("gemma3"))


class TestGemma3Multimodal(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("gemma3_multimodal"))


class TestGemma2(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("gemma2"))


class TestLlama(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("llama"))


class TestMistral(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("mistral"))


class TestSmolLM3(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("smollm3"))


class TestQwen2(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("qwen2"))


class TestQwen3(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("qwen3"))


class TestGPT2(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("gpt2"))


class TestGPTNeoXParallel(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("gpt_neox"))


class TestGPTNeoXSequential(AdapterSuite):
    make_model = staticmethod(lambda: tiny_model("gpt_neox_sequential"))


def test_every_adapter_is_exercised_by_a_suite() -> None:
    suites = {k.make_model().config.model_type for k in AdapterSuite.__subclasses__()}
    assert set(ADAPTERS) <= suites


GEMMA3_270M_WIDTHS = {"resid_pre": 640, "resid_post": 640, "attn_out": 1024, "mlp_in": 640, "mlp_out": 640}
"""Gemma 3 270M's width at each site (attn_out: 4 heads x 256 before o_proj)."""
GEMMA3_270M = Gemma3TextConfig(
    hidden_size=640,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    intermediate_size=2048,
)


@pytest.mark.parametrize(
    "site,expected",
    [  # DESIGN.md section 5: the Gemma Scope 2 hook points, verbatim
        ("resid_post", "model.layers.12.output"),
        ("attn_out", "model.layers.12.self_attn.o_proj.input"),
        ("mlp_out", "model.layers.12.post_feedforward_layernorm.output"),
        ("mlp_in", "model.layers.12.pre_feedforward_layernorm.output"),
        ("resid_pre", "model.layers.12.input"),
    ],
)
def test_gemma_scope_2_hook_points(site: str, expected: str) -> None:
    assert str(resolve_hookpoint(GEMMA3_270M, site, 12)) == expected


def test_gemma3_270m_widths_from_config() -> None:
    adapter = adapter_for(GEMMA3_270M)
    assert {s: adapter.site_width(s) for s in adapter.sites} == GEMMA3_270M_WIDTHS
    assert adapter.layer_module(17) == "model.layers.17"


def test_unsupported_model_lists_supported_types() -> None:
    with pytest.raises(UnsupportedModelError, match="gemma3_text") as err:
        adapter_for(BertConfig())
    assert "'bert'" in str(err.value) and isinstance(err.value, ValueError)
    with pytest.raises(UnsupportedModelError):
        adapter_for(object())


def test_model_with_unexpected_layout_is_rejected() -> None:
    base = tiny_model("llama").model  # the inner LlamaModel: paths lack the "model." prefix
    with pytest.raises(UnsupportedModelError, match="ForCausalLM"):
        adapter_for(base)


def test_supported_model_types() -> None:
    assert {"gemma3_text", "gemma3", "gemma2", "llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox"} <= set(
        supported_model_types()
    )


@pytest.mark.parametrize("text", ["model.layers.3", "model.layers.3.outputs", "", ".output", "a..b.input", 3])
def test_hookpoint_parse_errors(text: object) -> None:
    with pytest.raises(HookpointError):
        Hookpoint.parse(text)  # type: ignore[arg-type]


def test_hookpoint_round_trip_and_resolve_error() -> None:
    hp = Hookpoint.parse("model.layers.3.self_attn.o_proj.input")
    assert (hp.module, hp.io) == ("model.layers.3.self_attn.o_proj", "input")
    assert Hookpoint.parse(hp) is hp and str(hp) == "model.layers.3.self_attn.o_proj.input"
    model = tiny_model("llama")
    with pytest.raises(HookpointError, match="names no module"):
        Hookpoint("model.layers.9", "output").resolve(model)


def test_stop_hookpoint_choice() -> None:
    adapter = adapter_for(GEMMA3_270M)
    pre6, post6 = adapter.hookpoint("resid_pre", 6), adapter.hookpoint("resid_post", 6)
    assert adapter.stop_hookpoint([pre6]) == pre6  # nothing of layer 6 itself needs to run
    assert adapter.stop_hookpoint([pre6, adapter.hookpoint("mlp_out", 2)]) == pre6
    assert adapter.stop_hookpoint([adapter.hookpoint("attn_out", 6), pre6]) == post6
    assert adapter.stop_hookpoint(["model.norm.output", pre6]) is None  # outside the layer stack: full forward
    assert adapter.layer_of("lm_head.output") is None and adapter.layer_of(post6) == 6
    with pytest.raises(HookpointError):
        adapter.stop_hookpoint([])
