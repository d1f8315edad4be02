"""ScopedModel on tiny random-config models of every supported family.

Independent references: transformers' own ``output_hidden_states`` and plain
torch forward hooks written here (not scope_hub.hooks), NumPy-free but
hand-written math for the replacements.
"""

from __future__ import annotations

import pytest
import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.errors import DictionaryNotFoundError, ShapeMismatchError
from scope_hub.hookpoints import adapter_for
from scope_hub.hooks import attached_hookpoints
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import N_LAYERS, PAD_ID, tiny_model

FAMILIES = ["gemma3", "gemma2", "llama", "qwen2", "qwen3", "gpt2", "gpt_neox"]
LAYER = 1
SPLICE_ATOL = 1e-5  # splice with error term vs bare logits, fp32


def _ids(batch=2, seq=7, seed=0):
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _sae(model, site="resid_post", layer=LAYER, architecture="jumprelu", seed=0, d_sae=48):
    width = adapter_for(model).site_width(site)
    cfg = make_config("sae", architecture, d_in=width, d_sae=d_sae, site=site, layer=layer)
    return make_dictionary(cfg, seed=seed).eval()


def _plain_hook(model, hookpoint: str, fn):
    """A hand-written torch hook, independent of scope_hub.hooks."""
    module_path, io = hookpoint.rsplit(".", 1)
    module = model.get_submodule(module_path)
    if io == "output":

        def out_hook(mod, args, output):
            if isinstance(output, tuple):
                return (fn(output[0]), *output[1:])
            return fn(output)

        return module.register_forward_hook(out_hook)

    def pre_hook(mod, args, kwargs):
        if args:
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_observe_is_exact_and_features_match_independent_hidden_states(family):
    model = tiny_model(family)
    sae = _sae(model)
    sm = ScopedModel.from_pretrained(model, dictionaries={"res": sae})
    ids = _ids()
    bare = model(ids, output_hidden_states=True)
    out, cache = sm.run_with_cache(ids)
    assert torch.equal(out.logits, bare.logits), "observing must not change a single bit"
    torch.testing.assert_close(cache["res"], sae.encode(bare.hidden_states[LAYER + 1]), rtol=0, atol=0)
    assert attached_hookpoints(model) == [], "no hook may stay behind after run_with_cache"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "resid_pre"])
def test_splice_matches_hand_written_replacement_and_error_term_restores_logits(family, site):
    model = tiny_model(family)
    sae = _sae(model, site=site)
    sm = ScopedModel.from_pretrained(model, dictionaries={"d": sae})
    hookpoint = sm.hookpoints("d")[1][0]
    ids = _ids()
    bare = model(ids).logits
    handle = _plain_hook(model, hookpoint, lambda act: sae(act))
    try:
        expected = model(ids).logits
    finally:
        handle.remove()
    with sm.splice():
        spliced = sm(ids).logits
    torch.testing.assert_close(spliced, expected, rtol=0, atol=0)
    assert (spliced - bare).abs().max() > 1e-3, "a random dictionary must change the logits"
    with sm.splice(error_term=True):
        restored = sm(ids).logits
    torch.testing.assert_close(restored, bare, rtol=0, atol=SPLICE_ATOL)


@pytest.mark.parametrize("family", ["gemma3", "llama", "gpt2"])
@pytest.mark.parametrize("type_", ["transcoder", "skip_transcoder"])
def test_transcoder_splice_replaces_mlp_output_computed_from_mlp_input(family, type_):
    model = tiny_model(family)
    adapter = adapter_for(model)
    width = adapter.site_width("mlp_in")
    cfg = make_config(type_, "relu", d_in=width, d_out=width, d_sae=32, site="mlp_in", site_out="mlp_out", layer=LAYER)
    tc = make_dictionary(cfg).eval()
    sm = ScopedModel.from_pretrained(model, dictionaries={"tc": tc})
    block = adapter.mlp_block(LAYER)
    ids = _ids()
    seen = {}
    h_in = _plain_hook(model, str(block.input), lambda a: seen.setdefault("x", a))
    h_out = _plain_hook(model, str(block.output), lambda a: tc(seen["x"]))
    try:
        expected = model(ids).logits
    finally:
        h_in.remove(), h_out.remove()
    torch.testing.assert_close(sm.splice()(ids).logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(sm.splice(error_term=True)(ids).logits, model(ids).logits, rtol=0, atol=SPLICE_ATOL)


def test_clt_splices_every_mlp_output_from_all_earlier_layers():
    model = tiny_model("gemma3")
    adapter = adapter_for(model)
    width = adapter.site_width("mlp_in")
    cfg = make_config(
        "clt",
        "jumprelu",
        d_in=width,
        d_out=width,
        d_sae=16,
        n_layers=N_LAYERS,
        site="mlp_in",
        site_out="mlp_out",
        affine_skip=True,
    )
    clt = make_dictionary(cfg).eval()
    sm = ScopedModel.from_pretrained(model, dictionaries={"clt": clt})
    ids = _ids()
    inputs: list[torch.Tensor] = []
    handles = []
    for layer in range(N_LAYERS):
        block = adapter.mlp_block(layer)
        handles.append(_plain_hook(model, str(block.input), lambda a: inputs.append(a) or a))

        def write(act, j=layer):  # hand-written: y_j = sum_{i<=j} f_i W_i[:, j-i] + b_j + x_j A_j
            feats = [clt.encode_layer(i, inputs[i]) for i in range(j + 1)]
            y = clt.b_dec(j) + sum(feats[i] @ clt.w_dec(i)[:, j - i] for i in range(j + 1))
            return y + inputs[j] @ clt.per_layer[j].affine_skip_connection

        handles.append(_plain_hook(model, str(block.output), write))
    try:
        expected = model(ids).logits
    finally:
        [h.remove() for h in handles]
    torch.testing.assert_close(sm.splice()(ids).logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sm.splice(error_term=True)(ids).logits, model(ids).logits, rtol=0, atol=SPLICE_ATOL)
    _, cache = sm.run_with_cache(ids)
    assert cache["clt"].shape == (2, 7, N_LAYERS, 16)
    with pytest.raises(ValueError, match=r"name features as \(layer_index, feature or features\)"):
        sm.ablate("clt", 3)  # which layer's feature 3? a CLT edit must say
    assert not torch.equal(sm.ablate("clt", (1, [2, 3]))(ids).logits, model(ids).logits)
    with pytest.raises(IndexError, match=f"clt has no layer index {N_LAYERS} of {N_LAYERS}"):
        sm.ablate("clt", (N_LAYERS, 3))


def _hand_edited_logits(model, sae, hookpoint, ids, where, value, add=False):
    """Logits with a plain hook that edits ``features[where]`` (add or set) and writes the change through the decoder."""

    def edit(act):
        features = sae.encode(act)
        edited = features.clone()
        if add:
            edited[where] += value
        else:
            edited[where] = value
        return act + (edited - features) @ sae.w_dec

    handle = _plain_hook(model, hookpoint, edit)
    try:
        return model(ids).logits
    finally:
        handle.remove()


def test_steer_clamp_ablate_are_feature_edits_through_the_decoder():
    model = tiny_model("llama")
    sae = _sae(model, architecture="relu")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": sae})
    ids = _ids()

    def expect(where, value, add=False):
        return _hand_edited_logits(model, sae, sm.hookpoints("s")[1][0], ids, where, value, add)

    torch.testing.assert_close(sm.steer("s", 3, 4.0)(ids).logits, expect((..., 3), 4.0, add=True), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sm.clamp("s", 5, 2.5)(ids).logits, expect((..., 5), 2.5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sm.ablate("s", [1, 2])(ids).logits, expect((..., [1, 2]), 0.0), rtol=1e-5, atol=1e-5)
    with sm.steer("s", 3, 4.0), sm.disable_dictionaries():
        assert torch.equal(sm(ids).logits, model(ids).logits)
    for bad in (48, -1, [2, 48]):  # d_sae is 48: refused when the edit is made, not mid-forward
        with pytest.raises(IndexError, match="s has no feature .*features are 0..47"):
            sm.steer("s", bad, 1.0)


def test_edits_limited_to_positions_touch_only_those_positions():
    model = tiny_model("gemma3")
    sae = _sae(model, architecture="relu")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": sae})
    ids = _ids(seq=6)

    def expect(where, value, add=False):
        return _hand_edited_logits(model, sae, sm.hookpoints("s")[1][0], ids, where, value, add)

    steer = sm.steer("s", 3, 4.0, positions=[1, 4, 99])(ids).logits  # 99: past the end, skipped
    torch.testing.assert_close(steer, expect((slice(None), [1, 4], 3), 4.0, add=True), rtol=1e-5, atol=1e-5)
    assert torch.equal(steer[:, 0], model(ids).logits[:, 0])  # causal: nothing before position 1 moves
    assert torch.equal(sm.steer("s", 3, 4.0, positions=torch.tensor([1, 4]))(ids).logits, steer)  # int-likes
    with pytest.raises(ValueError, match="step must be positive"):
        sm.steer("s", 3, 4.0, positions=slice(None, None, -1))
    torch.testing.assert_close(
        sm.clamp("s", 5, 2.5, positions=slice(-2, None))(ids).logits,
        expect((slice(None), slice(-2, None), 5), 2.5),
        rtol=1e-5,
        atol=1e-5,
    )
    with sm.splice(error_term=True), sm.ablate("s", [1, 2], positions=[0]):
        spliced = sm(ids).logits
    with sm.splice(error_term=True), sm.ablate("s", [1, 2]):
        everywhere = sm(ids).logits
    assert torch.equal(spliced[:, 0], everywhere[:, 0]) and not torch.allclose(spliced[:, 1:], everywhere[:, 1:])


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_steering_changes_generate_deterministically_with_kv_cache(family):
    model = tiny_model(family)
    sae = _sae(model, architecture="relu")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": sae})
    ids = _ids(batch=1, seq=4)
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD_ID)
    plain = sm.generate(ids, **kwargs)
    feature = int(sae.w_dec.norm(dim=-1).argmax())
    first = sm.steer("s", feature, 50.0).generate(ids, **kwargs)
    second = sm.steer("s", feature, 50.0).generate(ids, **kwargs)
    assert torch.equal(first, second) and not torch.equal(first, plain)
    # With KV cache, each step's new token is steered exactly as in a full recompute.
    with sm.steer("s", feature, 50.0):
        full = model(first[:, :-1]).logits[:, -1].argmax(-1)
    assert int(full) == int(first[0, -1])
    assert torch.equal(sm.generate(ids, **kwargs), plain), "steering must end with its context"
    # Absolute positions mean the same with a KV cache as in a full recompute: prompt tokens only
    # ([0], [1]), from a position on (slice(5, None): generated tokens too). The last token of each
    # call (slice(-1, None)) is the prompt's last (3), then every new token: slice(3, None) in a recompute.
    for positions, recompute_positions in [
        ([0], [0]),
        ([1], [1]),
        (slice(5, None), slice(5, None)),
        (slice(-1, None), slice(3, None)),
    ]:
        generated = sm.steer("s", feature, 50.0, positions=positions).generate(ids, **kwargs)
        with sm.steer("s", feature, 50.0, positions=recompute_positions):
            recomputed = [int(model(generated[:, :t]).logits[0, -1].argmax()) for t in range(4, generated.shape[1])]
        assert recomputed == generated[0, 4:].tolist(), positions


def test_hooks_are_removed_after_an_exception_inside_a_mode():
    model = tiny_model("qwen2")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": _sae(model)})
    ids = _ids()
    bare = model(ids).logits
    with pytest.raises(RuntimeError, match="boom"), sm.splice(), sm.steer("s", 0, 3.0):
        assert attached_hookpoints(model) != []
        raise RuntimeError("boom")
    assert attached_hookpoints(model) == []
    assert torch.equal(sm(ids).logits, bare)


def test_padding_positions_report_no_active_features():
    model = tiny_model("llama")
    sae = _sae(model, architecture="relu")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": sae})
    ids = _ids(batch=2, seq=6)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding in the first row
    ids[0, :2] = PAD_ID
    _, cache = sm.run_with_cache(ids, attention_mask=mask)
    assert (cache["s"][0, :2] == 0).all() and (cache["s"][0, 2:] != 0).any()
    _, sparse = sm.run_with_cache(ids, attention_mask=mask, sparse=True)
    torch.testing.assert_close(sparse["s"].to_dense(), cache["s"])


def test_features_only_run_stops_after_the_last_hooked_layer():
    model = tiny_model("gemma3")
    sae = _sae(model, layer=0)
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": sae})
    ids = _ids()
    calls = []
    handle = model.model.layers[N_LAYERS - 1].register_forward_hook(lambda *a: calls.append(1))
    try:
        out, fast = sm.run_with_cache(ids, stop_after_last=True)
    finally:
        handle.remove()
    assert out is None and calls == []
    torch.testing.assert_close(fast["s"], sm.run_with_cache(ids)[1]["s"], rtol=0, atol=0)


def test_save_and_rebuild_pins_dictionaries(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "base")
    folder_sae = _sae(model, seed=3).save_pretrained(tmp_path / "folder_sae")
    sm = ScopedModel.from_pretrained(str(tmp_path / "base"), dictionaries=[str(folder_sae)])
    sm.attach(_sae(model, site="mlp_out", seed=4), name="inline")
    sm.save_pretrained(tmp_path / "scoped")
    again = ScopedModel.from_pretrained(tmp_path / "scoped")
    assert list(again.dictionaries) == ["folder_sae", "inline"]
    ids = _ids()
    with sm.splice():
        a = sm(ids).logits
    with again.splice():
        b = again(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Changing a pinned folder's bytes is detected at rebuild.
    tampered = make_dictionary(
        make_config("sae", "jumprelu", d_in=64, d_sae=48, site="resid_post", layer=LAYER), seed=9
    )
    tampered.save_pretrained(folder_sae)
    with pytest.raises(ValueError, match="sha256 mismatch"):
        ScopedModel.from_pretrained(tmp_path / "scoped")


def test_wrapper_behaves_like_the_model_and_rejects_bad_attachments():
    model = tiny_model("llama")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": _sae(model)})
    assert sm.config is model.config and sm.device == model.device
    assert isinstance(sm.dictionaries["s"], Dictionary)
    with pytest.raises(ValueError, match="already attached"):
        sm.attach(_sae(model), name="s")
    with pytest.raises(KeyError, match="no attached dictionary named 'x'"):
        sm.steer("x", 0, 1.0)
    sm.detach("s")
    assert sm.dictionaries == {}
    bad = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=8))  # no site or layer
    with pytest.raises(ValueError, match="neither hook_point_in nor site"):
        sm.attach(bad, name="bad")
    width = adapter_for(model).site_width("mlp_in")
    wide = make_config("transcoder", "relu", d_in=width + 1, d_out=width, site="mlp_in", site_out="mlp_out", layer=1)
    with pytest.raises(ShapeMismatchError, match=f"d_in={width + 1} does not fit .* which is {width} wide"):
        sm.attach(make_dictionary(wide), name="wide")
    down = make_config(
        "transcoder",
        "relu",
        d_in=width,
        d_out=width + 2,
        layer=1,  # d_out checked too
        hook_point_in="model.layers.{layer}.mlp.down_proj.output",
        hook_point_out="model.layers.{layer}.mlp.down_proj.output",
    )
    with pytest.raises(ShapeMismatchError, match=f"d_out={width + 2} does not fit .*down_proj.output"):
        sm.attach(make_dictionary(down), name="down")
    # explicit hookpoints that are a site (as trainers record them): the site's width applies
    block = make_config("sae", "relu", d_in=width + 3, layer=1, hook_point_in="model.layers.{layer}.output")
    with pytest.raises(ShapeMismatchError, match=f"d_in={width + 3} does not fit model.layers.1.output"):
        sm.attach(make_dictionary(block), name="block")
    with pytest.raises(DictionaryNotFoundError, match="/no/such/sae: no such folder"):
        sm.attach("/no/such/sae")  # a path, not a malformed registry key
    assert sm.dictionaries == {} and not attached_hookpoints(model)


def test_hookpoints_are_public_and_match_the_adapter():
    model = tiny_model("gemma3")
    adapter = adapter_for(model)
    transcoder = make_dictionary(
        make_config(
            "transcoder",
            "relu",
            d_in=adapter.site_width("mlp_in"),
            d_out=adapter.site_width("mlp_out"),
            site="mlp_in",
            site_out="mlp_out",
            layer=LAYER,
        )
    )
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": _sae(model), "t": transcoder})
    assert sm.hookpoints("s") == ([str(adapter.hookpoint("resid_post", LAYER))],) * 2
    assert sm.hookpoints("t") == ([str(adapter.hookpoint("mlp_in", LAYER))], [str(adapter.hookpoint("mlp_out", LAYER))])
    with pytest.raises(KeyError, match="attached: \\['s', 't'\\]"):
        sm.hookpoints("x")


@pytest.mark.parametrize("family", ["gemma3", "gpt2"])
def test_capture_records_live_features_whose_gradient_is_the_chain_rule(family):
    model = tiny_model(family)
    sae = _sae(model, architecture="relu")
    sm = ScopedModel.from_pretrained(model, dictionaries={"s": sae})
    ids = _ids()
    # Reference: d logit / d (site activation) in the bare model, through a plain hook, then the chain
    # rule through the linear decoder: d logit / d f = d logit / d act @ w_dec^T.
    held = {}
    handle = _plain_hook(model, sm.hookpoints("s")[1][0], lambda a: held.setdefault("act", a.detach().requires_grad_()))
    try:
        bare_logit = model(ids).logits[1, -1, 7]
        (grad_act,) = torch.autograd.grad(bare_logit, held["act"])
    finally:
        handle.remove()
    feats = {}
    with sm.capture("s", into=feats):
        logits = sm(ids).logits
        (grad_f,) = torch.autograd.grad(logits[1, -1, 7], feats["s"])
    torch.testing.assert_close(logits, model(ids).logits, rtol=1e-5, atol=SPLICE_ATOL)  # error term: outputs unchanged
    torch.testing.assert_close(feats["s"].detach(), sae.encode(held["act"].detach()))
    torch.testing.assert_close(grad_f, grad_act @ sae.w_dec.detach().T, rtol=1e-4, atol=1e-6)
    assert not attached_hookpoints(model)  # the context removed its hooks
    model.requires_grad_(False), sae.requires_grad_(False)  # frozen, as for attribution on a big model
    with sm.capture("s", into=feats):
        (frozen_grad,) = torch.autograd.grad(sm(ids).logits[1, -1, 7], feats["s"])
    torch.testing.assert_close(frozen_grad, grad_f)


def test_modes_compose_per_dictionary_and_a_failed_mode_leaves_nothing_behind():
    model = tiny_model("llama")
    a, b = _sae(model, layer=0, architecture="relu"), _sae(model, layer=1, architecture="relu", seed=1)
    sm = ScopedModel.from_pretrained(model, dictionaries={"a": a, "b": b})
    ids = _ids()
    only_a = sm.splice("a")(ids).logits
    assert not torch.allclose(only_a, model(ids).logits, atol=1e-3)
    feats_a, feats_b = {}, {}
    with torch.no_grad():
        with sm.splice("a"), sm.capture("b", into=feats_b):  # b's error term must not leak to a
            torch.testing.assert_close(sm(ids).logits, only_a, rtol=1e-5, atol=SPLICE_ATOL)
        with sm.capture("a", into=feats_a), sm.splice("b"):  # nor b's lack of one to a
            with_b = sm(ids).logits
        torch.testing.assert_close(with_b, sm.splice("b")(ids).logits, rtol=1e-5, atol=SPLICE_ATOL)
        feats_a.clear(), feats_b.clear()
        with sm.capture("a", into=feats_a), sm.capture("b", into=feats_b):  # nested captures both record
            _, cache = sm.run_with_cache(ids, names=["b"])
        assert set(feats_a) == {"a"} and set(feats_b) == {"b"} and set(cache) == {"b"}
        assert torch.equal(feats_b["b"], cache["b"])  # the inner run records to both targets
    with pytest.raises(ValueError, match="positions=slice"):
        sm.steer("a", 1, 2.0, positions=slice(None, None, -2))
    bad = sm.splice("a")
    bad._changes["edits"] = {"a": ("not an edit",)}  # a mode whose hooks cannot be built
    with pytest.raises(AttributeError):
        bad.__enter__()
    assert not attached_hookpoints(model) and torch.equal(sm(ids).logits, model(ids).logits)
    torch.testing.assert_close(sm.splice("a")(ids).logits, only_a)
