"""Base vs 'instruction-tuned' on two tiny Llamas sharing an architecture (the second a perturbed copy)."""

from __future__ import annotations

import pytest
import torch

from scope_hub.analysis.activations import text_windows
from scope_hub.analysis.model_diff import compare_models, feature_stats
from scope_hub.errors import ConfigError
from scope_hub.hooks import capture
from scope_hub.scoped_model import ScopedModel
from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import tiny_gpt2, tiny_llama
from tests.analysis.helpers import chat_tokenizer, sae_with_features, unit

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1492 Columbus sailed the ocean blue.",
    "Water boils at one hundred degrees.",
    "She opened the door and found a library.",
]
SHIFTED, SCALED = 7, 9


def _pair():
    base, tuned = tiny_llama(0), tiny_llama(0)
    d, e = unit(21), unit(22)
    with torch.no_grad():
        base.model.embed_tokens.weight.add_(1.5 * e)
        tuned.model.embed_tokens.weight.add_(6.0 * e + 2.0 * d)  # "fine-tuning" adds d, quadruples e
        for p in tuned.model.layers[1:].parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return base, tuned, d, e


def test_planted_frequency_and_magnitude_shifts_rank_first():
    base, tuned, d, e = _pair()
    sae = sae_with_features({SHIFTED: d, SCALED: e}, layer=0, bias=-0.5, other_bias=-0.2)
    report = compare_models(base, tuned, sae, chat_tokenizer(), TEXTS, window=16, top_k=3)
    first = report.by_frequency[0]
    assert first.feature == SHIFTED and first.freq_a < 0.05 and first.freq_b > 0.95, report.to_markdown()
    assert first.log2_freq_ratio > 3
    scaled = report.by_magnitude[0]
    assert scaled.feature == SCALED and scaled.freq_a > 0.95 and scaled.log2_magnitude_ratio > 1.0
    assert report.n_tokens == sum(len(t) + -(-len(t) // 15) for t in TEXTS)  # bytes + a BOS per 16-token window


def test_fvu_of_a_base_dictionary_rises_on_the_tuned_model():
    base, tuned, _d, _ = _pair()
    tok = chat_tokenizer()
    ids, mask = text_windows(tok, TEXTS, 16)
    with capture(base, ["model.layers.0.output"]) as acts, torch.no_grad():
        base(ids, attention_mask=mask)
    x = acts["model.layers.0.output"][mask.bool()]
    # A dictionary fit to the base model: its top-8 principal directions, +/- (ReLU pairs reconstruct exactly in-span).
    mean = x.mean(0)
    u = torch.linalg.svd(x - mean, full_matrices=False).Vh[:8]
    sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=16, site="resid_post", layer=0))
    with torch.no_grad():
        sae.w_enc.copy_(torch.cat([u, -u]).T), sae.w_dec.copy_(torch.cat([u, -u]))
        sae.b_enc.copy_(torch.cat([-u @ mean, u @ mean])), sae.b_dec.copy_(mean)
    report = compare_models(base, tuned, sae, tok, TEXTS, window=16)
    with torch.no_grad():
        recon = sae(x)
    expected = float(((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert report.fvu_a == pytest.approx(expected, rel=1e-4)
    assert report.fvu_a < 0.5 < report.fvu_b


def test_same_model_gives_no_shift_and_mismatched_models_are_refused():
    sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=16, site="resid_post", layer=1))
    report = compare_models(tiny_llama(0), tiny_llama(0), sae, chat_tokenizer(), TEXTS[:2], window=16)
    assert report.fvu_a == report.fvu_b and all(r.log2_freq_ratio == 0 for r in report.by_frequency)
    with pytest.raises(ConfigError, match="one architecture"):
        compare_models(tiny_llama(0), tiny_gpt2(0), sae, chat_tokenizer(), TEXTS[:1])
    scoped = ScopedModel.from_pretrained(tiny_llama(0), dictionaries={"s": sae})
    ids, mask = text_windows(chat_tokenizer(), TEXTS[:1], 16)
    stats = feature_stats(scoped, "s", ids, mask)
    assert stats.n_tokens == int(mask.sum()) and 0 <= float(stats.frequency.min()) <= float(stats.frequency.max()) <= 1
