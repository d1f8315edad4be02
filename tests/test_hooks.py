"""Scoped hooks: cleanup, equivalence with hand-written torch hooks, composition, early stop, generate."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from scope_hub.errors import HookpointError, ShapeMismatchError
from scope_hub.hookpoints import adapter_for
from scope_hub.hooks import attached_hookpoints, capture, hook, replace, stop_after
from scope_hub.testing.tiny_models import tiny_model, tiny_tokenizer

FAMILIES = ["gemma3", "llama", "gpt2", "gpt_neox"]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return tiny_tokenizer()(["hello there, world", "a tiny test prompt"], return_tensors="pt").input_ids


def _torch_hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _steer(x: torch.Tensor) -> torch.Tensor:
    # Position-independent but non-trivial: scale plus a fixed direction.
    g = torch.Generator().manual_seed(0)
    return 0.5 * x + torch.randn(x.shape[-1], generator=g)


def _logits_then_remove(handle: torch.utils.hooks.RemovableHandle, model: torch.nn.Module, ids: torch.Tensor):
    """The logits with a hand-registered hook in place (the reference); the hook is removed after."""
    try:
        with torch.no_grad():
            return model(ids).logits
    finally:
        handle.remove()


def test_hooks_are_removed_after_an_exception(model: torch.nn.Module, ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    before = _torch_hook_count(model)
    hps = [adapter.hookpoint(s, 1) for s in adapter.sites]
    with (
        pytest.raises(RuntimeError, match="boom"),
        capture(model, hps),
        replace(model, hps[1], torch.neg),
        stop_after(model, hps[0]),
        hook(model, hps[2], print),
    ):
        assert _torch_hook_count(model) == before + len(hps)
        raise RuntimeError("boom")
    assert _torch_hook_count(model) == before and attached_hookpoints(model) == []
    # An exception raised by a hook mid-forward.
    with (
        pytest.raises(ValueError, match="inside the model"),
        hook(model, hps[3], lambda x: (_ for _ in ()).throw(ValueError("inside the model"))),
    ):
        model(ids)
    assert _torch_hook_count(model) == before


def test_replace_output_equals_a_hand_written_forward_hook(model: torch.nn.Module, ids: torch.Tensor) -> None:
    hp = adapter_for(model).hookpoint("resid_post", 1)
    module = hp.resolve(model)

    def by_hand(mod: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return _steer(out)

    reference = _logits_then_remove(module.register_forward_hook(by_hand), model, ids)
    with torch.no_grad(), replace(model, hp, _steer):
        ours = model(ids).logits
    with torch.no_grad():
        clean = model(ids).logits
    assert torch.equal(ours, reference) and not torch.allclose(ours, clean)


def test_replace_input_equals_a_hand_written_pre_hook(model: torch.nn.Module, ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    for site in ("resid_pre", "attn_out"):
        hp = adapter.hookpoint(site, 1)
        handle = hp.resolve(model).register_forward_pre_hook(lambda mod, args: (_steer(args[0]), *args[1:]))
        reference = _logits_then_remove(handle, model, ids)
        with torch.no_grad(), replace(model, hp, _steer):
            assert torch.equal(model(ids).logits, reference), site


def test_input_passed_as_hidden_states_keyword(ids: torch.Tensor) -> None:
    model = tiny_model("llama")  # LlamaDecoderLayer calls self_attn(hidden_states=...)
    hp = "model.layers.0.self_attn.input"

    def by_hand(mod: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
        return args, {**kwargs, "hidden_states": _steer(kwargs["hidden_states"])}

    handle = model.get_submodule("model.layers.0.self_attn").register_forward_pre_hook(by_hand, with_kwargs=True)
    try:
        with torch.no_grad():
            reference = model(ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), replace(model, hp, _steer), capture(model, [hp]) as got:
        assert torch.equal(model(ids).logits, reference)
    assert got[hp].shape == (*ids.shape, 64)


def test_tuple_outputs_keep_their_other_elements(ids: torch.Tensor) -> None:
    model = tiny_model("gpt2")  # GPT2Attention returns (attn_output, attn_weights)
    hp = "transformer.h.0.attn.output"
    handle = model.get_submodule("transformer.h.0.attn").register_forward_hook(lambda m, a, out: (out[0] * 0, *out[1:]))
    try:
        with torch.no_grad():
            reference = model(ids).logits
    finally:
        handle.remove()
    with torch.no_grad(), replace(model, hp, torch.zeros_like), capture(model, [hp]) as got:
        assert torch.equal(model(ids).logits, reference)
    assert torch.count_nonzero(got[hp]) == 0

    class Pair(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
            return x, "kept"

    pair = torch.nn.Sequential(Pair())
    with replace(pair, "0.output", torch.neg):
        out = pair(torch.ones(2))
    assert isinstance(out, tuple) and out[1] == "kept" and torch.equal(out[0], -torch.ones(2))


def test_functions_at_one_hookpoint_compose_in_attach_order(model: torch.nn.Module, ids: torch.Tensor) -> None:
    hp = str(adapter_for(model).hookpoint("mlp_out", 0))
    with (
        torch.no_grad(),
        capture(model, [hp]) as original,
        replace(model, hp, lambda x: x + 1.0),
        capture(model, [hp]) as middle,
        replace(model, hp, lambda x: x * 3.0),
        capture(model, [hp]) as final,
    ):
        model(ids)
    assert torch.equal(middle[hp], original[hp] + 1.0)
    assert torch.equal(final[hp], (original[hp] + 1.0) * 3.0)


def test_replace_errors_are_typed(model: torch.nn.Module, ids: torch.Tensor) -> None:
    hp = adapter_for(model).hookpoint("resid_post", 0)
    with pytest.raises(ShapeMismatchError, match=str(hp)), replace(model, hp, lambda x: x[..., :3]):
        model(ids)
    with pytest.raises(HookpointError, match="returned None"), replace(model, hp, lambda x: None):  # type: ignore[arg-type,return-value]
        model(ids)
    with pytest.raises(HookpointError, match="names no module"), capture(model, ["model.nowhere.output"]):
        pass
    assert attached_hookpoints(model) == []


def test_capture_accumulate_and_detach(model: torch.nn.Module, ids: torch.Tensor) -> None:
    hp = str(adapter_for(model).hookpoint("resid_post", 0))
    with capture(model, [hp], accumulate=True) as many, capture(model, [hp], detach=False) as live:
        model(ids)
        model(ids[:1])
    assert [t.shape[0] for t in many[hp]] == [2, 1] and not many[hp][0].requires_grad
    assert live[hp].shape[0] == 1 and live[hp].requires_grad  # last forward wins; graph kept


def test_stop_after_matches_full_forward_and_skips_the_rest(model: torch.nn.Module, ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    hps = [adapter.hookpoint(s, 1) for s in adapter.sites]
    head = model.get_output_embeddings()
    with torch.no_grad(), capture(model, hps) as full:
        model(ids)
    calls: list[str] = []
    handle = head.register_forward_hook(lambda *a: calls.append("lm_head"))
    try:
        with torch.no_grad(), capture(model, hps) as early, stop_after(model, adapter.stop_hookpoint(hps)) as run:
            model(ids)
            raise AssertionError("unreachable: the forward stops inside")
    finally:
        handle.remove()
    assert run.stopped and calls == []
    for hp in hps:
        assert torch.equal(early[str(hp)], full[str(hp)]), hp


def test_stop_hook_runs_after_hooks_attached_later_at_the_same_point(model: torch.nn.Module, ids: torch.Tensor) -> None:
    hp = adapter_for(model).hookpoint("resid_post", 0)
    with stop_after(model, hp) as run, capture(model, [hp]) as got:
        model(ids)
    assert run.stopped and str(hp) in got


def test_stop_after_skips_every_later_layer_and_the_unembedding() -> None:
    # Speed itself is measured in benchmarks/; here: the work after the stop really is skipped.
    cfg = LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 512, (2, 8))
    hp = adapter_for(model).hookpoint("resid_post", 1)
    ran: list[str] = []
    handles = [
        module.register_forward_hook(lambda *a, name=name: ran.append(name))
        for name, module in model.named_modules()
        if name in {f"model.layers.{i}" for i in range(6)} | {"lm_head"}
    ]
    try:
        with torch.no_grad(), capture(model, [hp]) as got, stop_after(model, hp) as result:
            model(ids)
    finally:
        [h.remove() for h in handles]
    assert result.stopped and ran == ["model.layers.0", "model.layers.1"] and str(hp) in got


def test_nested_stops_catch_only_their_own(model: torch.nn.Module, ids: torch.Tensor) -> None:
    adapter = adapter_for(model)
    early, late = adapter.hookpoint("resid_post", 0), adapter.hookpoint("resid_post", 2)
    with stop_after(model, early) as outer, stop_after(model, late) as inner:
        model(ids)
    assert outer.stopped and not inner.stopped
    with stop_after(model, "lm_head.output" if hasattr(model, "lm_head") else "embed_out.output") as never:
        pass
    assert not never.stopped and attached_hookpoints(model) == []


def test_generate_with_kv_cache(model: torch.nn.Module) -> None:
    tok = tiny_tokenizer()
    prompt = tok(["steer me"], return_tensors="pt")
    hp = adapter_for(model).hookpoint("resid_post", 1)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)

    handle = hp.resolve(model).register_forward_hook(lambda m, a, out: _steer(out))
    try:
        reference = model.generate(**prompt, **kw)
    finally:
        handle.remove()
    with replace(model, hp, _steer), capture(model, [hp], accumulate=True) as steps:
        cached = model.generate(**prompt, **kw, use_cache=True)
    with replace(model, hp, _steer):
        uncached = model.generate(**prompt, **kw, use_cache=False)
    plain = model.generate(**prompt, **kw)
    assert torch.equal(cached, reference) and torch.equal(uncached, reference)
    assert not torch.equal(plain, reference)  # the steering changes the continuation
    n_prompt = prompt.input_ids.shape[1]
    assert [t.shape[1] for t in steps[str(hp)]] == [n_prompt] + [1] * (
        kw["max_new_tokens"] - 1
    )  # cache: one new token per step
