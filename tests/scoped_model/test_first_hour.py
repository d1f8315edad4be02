"""What a new user meets first: the tokenizer comes with the model, steering strengths have units,
bad dictionary sources fail before the model loads, keys in a list get short names.

References: transformers' own tokenizer loaded independently, hand-written torch hooks on the
bare model, and brute-force statistics over every token.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from scope_hub import model_resolution
from scope_hub.errors import ConfigError, DictionaryNotFoundError, UnknownKeyError, WeightsFileError
from scope_hub.feature_stats import FILE, FeatureStats
from scope_hub.gguf_models import MARKER
from scope_hub.hookpoints import adapter_for
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import PAD_ID, tiny_llama, tiny_tokenizer

LAYER = 1


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _sae(model, seed=0, d_sae=24, model_name=None):
    width = adapter_for(model).site_width("resid_post")
    config = make_config("sae", "relu", d_in=width, d_sae=d_sae, site="resid_post", layer=LAYER, model=model_name)
    return make_dictionary(config, seed=seed).eval()


def test_the_tokenizer_comes_from_the_same_source_as_the_model(model_folder, tmp_path, monkeypatch):
    reference = AutoTokenizer.from_pretrained(model_folder)
    texts = ["hello there", "hi"]
    expected = reference(texts, return_tensors="pt", padding=True).input_ids

    by_folder = ScopedModel.from_pretrained(str(model_folder))
    assert torch.equal(by_folder.to_tokens(texts), expected)
    assert by_folder.to_string(expected[1]) == reference.decode(expected[1])
    assert by_folder.to_string(expected) == [reference.decode(row) for row in expected]
    assert by_folder.to_str_tokens("hi") == ["<bos>", "h", "i"]
    assert by_folder.to_tokens("hi", prepend_bos=False).tolist() == [[104, 105]]

    # A Hub id missing from the HF cache falls back to the converted copy: tokenizer included, no request.
    converted = shutil.copytree(model_folder, tmp_path / "converted")
    (converted / MARKER).write_text('{"name": "gemma-3-270m", "source_sha256": "' + "ab" * 32 + '"}')
    monkeypatch.setitem(model_resolution.CONVERTERS, "gemma-3-270m", lambda progress=False: converted)
    monkeypatch.setattr(model_resolution, "_in_hf_cache", lambda repo, revision: False)
    by_hub_id = ScopedModel.from_pretrained("google/gemma-3-270m")
    assert torch.equal(by_hub_id.to_tokens(texts), expected)

    # A loaded model: its tokenizer is read from config._name_or_path on first use.
    wrapped = ScopedModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_folder))
    assert torch.equal(wrapped.to_tokens(texts), expected)
    explicit = ScopedModel.from_pretrained(str(model_folder), tokenizer=reference)
    assert explicit.tokenizer is reference


def test_a_model_without_a_tokenizer_says_how_to_give_one():
    sm = ScopedModel.from_pretrained(tiny_llama())  # built from a config: no folder to read from
    with pytest.raises(ConfigError, match=r"no tokenizer.*tokenizer=tok"):
        sm.tokenizer  # noqa: B018
    sm.tokenizer = tiny_tokenizer()
    assert sm.to_tokens("a").tolist() == [[sm.tokenizer.bos_token_id, 97]]


def test_bad_dictionary_sources_fail_before_the_model_loads(model_folder, tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the dictionaries were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    registry = (tmp_path / "registry").as_uri()
    cases = [
        (["/no/such/sae"], DictionaryNotFoundError, "no such folder"),
        (["not a key"], DictionaryNotFoundError, "neither a dictionary folder nor a registry key"),
        ({"x": "google/gemma-3-270m:resid_post/layer_6/width_16k/sae"}, UnknownKeyError, "is not published"),
        ("/no/such/single", DictionaryNotFoundError, "no such folder"),  # one source, not a list
    ]
    for dictionaries, error, message in cases:
        with pytest.raises(error, match=message):
            ScopedModel.from_pretrained(str(model_folder), dictionaries=dictionaries, registry=registry)


def test_keys_in_a_list_are_attached_under_short_names(model_folder, tmp_path):
    from scope_hub.registry import Registry

    model = AutoModelForCausalLM.from_pretrained(model_folder)
    registry = Registry((tmp_path / "registry").as_uri(), cache_dir=tmp_path / "cache")
    keys = [f"tiny:resid_post/layer_{LAYER}/width_24/sae/{v}" for v in ("a", "b")]
    stats = FeatureStats(torch.ones(24), torch.ones(24), torch.full((24,), 0.5), tokens=2)
    for seed, key in enumerate(keys):
        _sae(model, seed=seed, model_name="tiny").save_pretrained(tmp_path / key[-1])
        if seed == 0:
            stats.save(tmp_path / key[-1])  # published with the weights, pulled with them
        registry.push(tmp_path / key[-1], key, license="mit")
    sm = ScopedModel.from_pretrained(model, dictionaries=keys, registry=registry)
    # the second would take the same short name: it keeps its full key
    assert list(sm.dictionaries) == [f"resid_post_{LAYER}", keys[1]]
    assert list(sm.feature_stats) == [f"resid_post_{LAYER}"]
    assert torch.equal(sm.feature_stats[f"resid_post_{LAYER}"].frequency, stats.frequency)
    saved = sm.save_pretrained(tmp_path / "scoped")
    assert list(ScopedModel.from_pretrained(saved, registry=registry).dictionaries) == list(sm.dictionaries)


def _site_delta(model, mode, ids):
    """What a mode adds to the residual stream after layer LAYER, read by a plain torch pre-hook on the next layer."""
    seen = []

    def grab(module, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    handle = model.model.layers[LAYER + 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(ids)
        mode(ids)
    finally:
        handle.remove()
    return seen[1] - seen[0]


def test_steering_units_scale_alpha_by_the_recorded_statistics(tmp_path):
    model = tiny_llama().eval()
    sae = _sae(model)
    stats = FeatureStats(
        max=torch.linspace(1.0, 3.0, 24),
        mean_active=torch.linspace(0.5, 1.0, 24),
        frequency=torch.full((24,), 0.1),
        tokens=1000,
        site_norm=7.0,
    )
    folder = sae.save_pretrained(tmp_path / "sae")
    stats.save(folder)
    sm = ScopedModel.from_pretrained(model, dictionaries={"sae": folder})
    assert torch.equal(sm.feature_stats["sae"].max, stats.max) and sm.feature_stats["sae"].site_norm == 7.0
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    w_dec = sae.w_dec.detach()
    f = 5
    for unit, scale in (("max", float(stats.max[f])), ("mean", float(stats.mean_active[f]))):
        delta = _site_delta(model, sm.steer("sae", f, 2.0, unit=unit), ids)
        torch.testing.assert_close(delta, (2.0 * scale * w_dec[f]).expand_as(delta), rtol=1e-4, atol=1e-5)
    delta = _site_delta(model, sm.steer("sae", f, 0.5, unit="norm"), ids)
    torch.testing.assert_close(delta.norm(dim=-1), torch.full(delta.shape[:2], 0.5 * 7.0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(delta[0, 0] / delta[0, 0].norm(), w_dec[f] / w_dec[f].norm(), rtol=1e-4, atol=1e-5)
    # default unit: alpha is added to the activation as given
    delta = _site_delta(model, sm.steer("sae", f, 3.0), ids)
    torch.testing.assert_close(delta, (3.0 * w_dec[f]).expand_as(delta), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="use one of activation, max, mean, norm"):
        sm.steer("sae", f, 1.0, unit="sigma")

    zero = FeatureStats(stats.max * 0, stats.mean_active * 0, stats.frequency * 0, tokens=10)
    sm.feature_stats["sae"] = zero
    with pytest.raises(ConfigError, match="never fired on the 10 tokens"):
        sm.steer("sae", f, 1.0, unit="max")


def test_without_statistics_only_raw_units_work_until_they_are_measured(tmp_path):
    model = tiny_llama().eval()
    sae = _sae(model)
    sm = ScopedModel.from_pretrained(model, dictionaries={"sae": sae})
    with pytest.raises(ConfigError, match="no feature statistics.*measure_feature_stats"):
        sm.steer("sae", 0, 2.0, unit="max")
    ids = torch.tensor([[1, 5, 9, 13, 17, 21], [PAD_ID, PAD_ID, 2, 4, 6, 8]])
    mask = (ids != PAD_ID).long()
    stats = sm.measure_feature_stats("sae", ids, attention_mask=mask)

    hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[LAYER + 1]
    real = hidden[mask.bool()].detach().double().numpy()  # brute force over the 10 real tokens
    features = sae.encode(torch.from_numpy(real).float()).detach().double().numpy()
    active = features != 0
    np.testing.assert_allclose(stats.max.numpy(), features.max(0), rtol=1e-5)
    np.testing.assert_allclose(stats.frequency.numpy(), active.mean(0), rtol=1e-6)
    mean_active = np.where(active.any(0), (features * active).sum(0) / np.maximum(active.sum(0), 1), 0.0)
    np.testing.assert_allclose(stats.mean_active.numpy(), mean_active, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats.site_norm, np.linalg.norm(real, axis=-1).mean(), rtol=1e-5)
    assert stats.tokens == 10 and sm.feature_stats["sae"] is stats

    folder = sae.save_pretrained(tmp_path / "sae")
    (folder / FILE).write_bytes(b"not safetensors")
    with pytest.raises(WeightsFileError, match="unreadable feature statistics"):
        ScopedModel.from_pretrained(model, dictionaries={"broken": folder})
    FeatureStats(stats.max[:3], stats.mean_active[:3], stats.frequency[:3], tokens=1).save(folder)
    with pytest.raises(ConfigError, match="describes 3 features but the dictionary has 24"):
        ScopedModel.from_pretrained(model, dictionaries={"narrow": folder})


def test_training_records_feature_statistics_beside_the_weights(tmp_path):
    from tests.trainers.helpers import SMALL_TOPK
    from trainers.config import load_config
    from trainers.pipeline import train

    out = tmp_path / "sae"
    cfg = load_config(None, [*SMALL_TOPK, "train.tokens=4096", "eval.tokens=2048", f"output.dir={out}"])
    outcome = train(cfg)
    stats = FeatureStats.load(out)
    assert stats is not None and stats.tokens == 2048 and stats.max.shape == (32,)
    counts = stats.frequency * stats.tokens
    torch.testing.assert_close(counts, counts.round())  # a frequency is a count of tokens
    live = stats.frequency > 0
    assert live.any() and bool((stats.max[live] >= stats.mean_active[live]).all())
    assert stats.site_norm is not None and stats.site_norm > 0
    assert outcome.dictionary.config.metrics.eval_tokens == 2048
