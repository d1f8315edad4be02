"""Harvest and a short training run on the real Gemma 3 270M (integration set: slow, needs the GGUF package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.config import load_config
from trainers.data import token_sequences
from trainers.harvest import Harvester, harvest_to_disk, site_spec
from trainers.harvest_shards import HarvestReader

pytestmark = pytest.mark.integration

TEXT = (
    "The Eiffel Tower is in Paris. Water boils at 100 degrees Celsius at sea level. def add(a, b):\n    return a + b\n"
) * 6


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    return path


def _harvest(gemma3_270m, text_file: Path, tmp: Path, *overrides: str):
    cfg = load_config(
        None,
        [
            "model.id=google/gemma-3-270m",
            f"data.paths=[{text_file}]",
            "data.context_size=32",
            "harvest.batch_sequences=4",
            *overrides,
        ],
    )
    data = token_sequences(cfg.data, gemma3_270m.tokenizer)
    harvester = Harvester(
        gemma3_270m.model, site_spec(gemma3_270m.model, cfg), gemma3_270m.tokenizer.bos_token_id, cfg.data.exclude_bos
    )
    reader = HarvestReader(harvest_to_disk(harvester, data, cfg, tmp / "h", progress=False))
    return data, harvester, reader.rows(torch.arange(len(reader)))


def test_resid_post_harvest_equals_hidden_states(gemma3_270m, text_file: Path, tmp_path: Path) -> None:
    data, _harvester, (x, _) = _harvest(gemma3_270m, text_file, tmp_path, "harvest.layer=6")
    with torch.no_grad():
        hidden = gemma3_270m.model(
            input_ids=data.input_ids, attention_mask=data.attention_mask, output_hidden_states=True
        ).hidden_states[7]
    keep = data.input_ids != gemma3_270m.tokenizer.bos_token_id
    assert x.shape == (int(keep.sum()), 1, 640)
    torch.testing.assert_close(x[:, 0], hidden[keep], atol=1e-4, rtol=1e-5)  # batching of 4 vs all at once


def test_transcoder_sites_and_early_stop(gemma3_270m, text_file: Path, tmp_path: Path) -> None:
    data, harvester, (x, t) = _harvest(
        gemma3_270m, text_file, tmp_path, "dictionary.type=transcoder", "harvest.site=mlp_in", "harvest.layer=5"
    )
    model, seen, ran = gemma3_270m.model, {}, []
    hooks = [
        model.model.layers[5].pre_feedforward_layernorm.register_forward_hook(lambda m, a, o: seen.setdefault("in", o)),
        model.model.layers[5].post_feedforward_layernorm.register_forward_hook(
            lambda m, a, o: seen.setdefault("out", o)
        ),
    ]
    try:
        with torch.no_grad():
            model(input_ids=data.input_ids[:4], attention_mask=data.attention_mask[:4])
    finally:
        for h in hooks:
            h.remove()
    keep = data.input_ids[:4] != gemma3_270m.tokenizer.bos_token_id
    n = int(keep.sum())
    torch.testing.assert_close(x[:n, 0], seen["in"][keep])
    torch.testing.assert_close(t[:n, 0], seen["out"][keep])
    watch = [
        model.model.layers[6].register_forward_hook(lambda *a: ran.append(6)),
        model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head")),
    ]
    try:
        harvester(data.input_ids[:2], data.attention_mask[:2])
    finally:
        for h in watch:
            h.remove()
    assert ran == []  # the forward stopped after layer 5


def test_short_training_run_end_to_end(gemma3_270m, text_file: Path, tmp_path: Path, monkeypatch) -> None:
    import trainers.pipeline as pipeline

    # reuse the session's loaded model instead of loading a second copy
    monkeypatch.setattr(pipeline, "load_model", lambda cfg: (gemma3_270m.model, gemma3_270m.tokenizer))
    cfg = load_config(
        None,
        [
            "model.id=google/gemma-3-270m",
            f"data.paths=[{text_file}]",
            "data.context_size=64",
            "harvest.layer=6",
            f"harvest.cache_dir={tmp_path / 'h'}",
            "dictionary.architecture=topk",
            "dictionary.k=16",
            "dictionary.d_sae=1024",
            "train.tokens=8192",
            "train.batch_size=256",
            "optim.lr=1e-3",
            "optim.warmup_steps=5",
            "eval.tokens=256",
            "eval.delta_lm_loss=true",
            "eval.lm_sequences=2",
            f"output.dir={tmp_path / 'out'}",
            "train.progress=false",
        ],
    )
    outcome = pipeline.train(cfg)
    m = outcome.dictionary.config.metrics
    assert m.fvu < 0.9 and abs(m.delta_lm_loss_error_term) < 1e-3 and m.delta_lm_loss > 0
    assert outcome.dictionary.config.hook_point_in == "model.layers.6.output"


def test_eighteen_resid_post_saes_from_one_forward(gemma3_270m, tmp_path: Path, monkeypatch) -> None:
    import trainers.pipeline as pipeline
    from scope_hub.dictionaries import Dictionary

    monkeypatch.setattr(pipeline, "load_model", lambda cfg: (gemma3_270m.model, gemma3_270m.tokenizer))
    captured = []
    original = Harvester.__call__
    monkeypatch.setattr(
        Harvester, "__call__", lambda self, *a: captured.append(len(self.spec.hookpoints)) or original(self, *a)
    )
    common = [
        "model.id=google/gemma-3-270m",
        "data.corpus=stdlib-docstrings",
        "data.max_tokens=3072",
        "data.context_size=64",
        "harvest.batch_sequences=8",
        "harvest.stream_window=4",
        "dictionary.architecture=topk",
        "dictionary.k=8",
        "dictionary.d_sae=256",
        "train.tokens=2048",
        "train.batch_size=256",
        "train.log_every=4",
        "optim.lr=1e-3",
        "optim.warmup_steps=2",
        "eval.tokens=256",
        "train.progress=false",
    ]
    outcome = pipeline.train(load_config(None, [*common, "harvest.layers=all", f"output.dir={tmp_path / 'all'}"]))
    assert [p.name for p in outcome.parts] == [f"resid_post/layer_{i}" for i in range(18)]
    assert set(captured) == {18}  # every forward captured all 18 layers at once
    for part in outcome.parts:
        config = Dictionary.from_pretrained(tmp_path / "all" / part.name).config
        assert config.hook_point_in == f"model.layers.{part.name.rsplit('_', 1)[1]}.output"
        assert 0 < config.metrics.fvu < 1.5 and (tmp_path / "all" / part.name / "metrics.jsonl").is_file()
    for layer in (3, 17):  # two of them against their own one-dictionary runs
        alone = pipeline.train(
            load_config(None, [*common, f"harvest.layer={layer}", f"output.dir={tmp_path / str(layer)}"])
        )
        together = outcome.parts[layer].dictionary
        for name, value in alone.dictionary.named_parameters():
            torch.testing.assert_close(together.get_parameter(name), value, atol=1e-5, rtol=1e-4)
