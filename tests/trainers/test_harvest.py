"""Harvesting through scope-hub's hookpoints equals activations taken independently; shards round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scope_hub.testing.tiny_models import tiny_gemma3, tiny_tokenizer
from trainers.config import load_config
from trainers.data import token_sequences
from trainers.harvest import Harvester, harvest_to_disk, site_spec
from trainers.harvest_shards import HarvestReader, ShardSource, read_meta
from trainers.streaming import StreamingSource

TEXT = "The quick brown fox jumps over the lazy dog. Sphinx of black quartz, judge my vow! " * 12


@pytest.fixture(scope="module")
def model():
    return tiny_gemma3()


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "a.txt"
    path.write_text(TEXT)
    return path


def _setup(model, text_file: Path, *overrides: str):
    cfg = load_config(
        None,
        [
            "model.id=tiny",
            f"data.paths=[{text_file}]",
            "data.context_size=24",
            "harvest.batch_sequences=3",
            "harvest.shard_tokens=40",
            *overrides,
        ],
    )
    tok = tiny_tokenizer()
    data = token_sequences(cfg.data, tok)
    return cfg, data, Harvester(model, site_spec(model, cfg), tok.bos_token_id, cfg.data.exclude_bos)


def _independent(model, data, module_paths: list[str], io: str) -> list[torch.Tensor]:
    """Activations via plain torch hooks on the modules (no scope_hub code), full forward."""
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for path in module_paths:
        module = model.get_submodule(path)
        if io == "output":
            handles.append(module.register_forward_hook(lambda m, a, out, p=path: seen.__setitem__(p, out)))
        else:
            handles.append(module.register_forward_pre_hook(lambda m, a, p=path: seen.__setitem__(p, a[0])))
    try:
        with torch.no_grad():
            model(input_ids=data.input_ids, attention_mask=data.attention_mask)
    finally:
        for h in handles:
            h.remove()
    keep = data.input_ids != 257  # tiny tokenizer's BOS, excluded by default
    return [seen[p][keep] for p in module_paths]


def test_resid_post_harvest_equals_hidden_states(model, text_file, tmp_path) -> None:
    cfg, data, harvester = _setup(model, text_file, "harvest.layer=1")
    reader = HarvestReader(harvest_to_disk(harvester, data, cfg, tmp_path / "h", progress=False))
    with torch.no_grad():
        hidden = model(
            input_ids=data.input_ids, attention_mask=data.attention_mask, output_hidden_states=True
        ).hidden_states[2]  # output of layer 1
    keep = data.input_ids != 257
    x, target = reader.rows(torch.arange(len(reader)))
    assert target is x and x.shape == (int(keep.sum()), 1, 64)
    assert torch.equal(x[:, 0], hidden[keep])
    assert len(reader.meta["shards"]) > 2 and reader.meta["complete"]


def test_transcoder_and_clt_sites_equal_plain_torch_hooks(model, text_file, tmp_path) -> None:
    cfg, data, harvester = _setup(
        model, text_file, "dictionary.type=clt", "harvest.site=mlp_in", "harvest.layers=[0,1,2]"
    )
    reader = HarvestReader(harvest_to_disk(harvester, data, cfg, tmp_path / "h", progress=False))
    x, t = reader.rows(torch.arange(len(reader)))
    ins = _independent(model, data, [f"model.layers.{i}.pre_feedforward_layernorm" for i in range(3)], "output")
    outs = _independent(model, data, [f"model.layers.{i}.post_feedforward_layernorm" for i in range(3)], "output")
    for i in range(3):
        assert torch.equal(x[:, i], ins[i]) and torch.equal(t[:, i], outs[i])


def test_forward_stops_after_the_last_needed_layer(model, text_file) -> None:
    _, data, harvester = _setup(model, text_file, "harvest.layer=0", "harvest.site=resid_post")
    calls = []
    handles = [
        model.get_submodule(p).register_forward_hook(lambda *a, p=p: calls.append(p))
        for p in ("model.layers.0", "model.layers.1", "model.layers.2", "lm_head")
    ]
    try:
        harvester(data.input_ids[:2], data.attention_mask[:2])
    finally:
        for h in handles:
            h.remove()
    assert calls == ["model.layers.0"]


def test_interrupted_harvest_resumes_to_the_same_shards(model, text_file, tmp_path) -> None:
    cfg, data, harvester = _setup(model, text_file, "harvest.layer=1")
    whole = HarvestReader(harvest_to_disk(harvester, data, cfg, tmp_path / "whole", progress=False))

    class Dies:
        spec, model, calls = harvester.spec, harvester.model, 0

        def __call__(self, *args):
            Dies.calls += 1
            if Dies.calls == 6:
                raise KeyboardInterrupt  # stands in for a kill mid-harvest
            return harvester(*args)

    with pytest.raises(KeyboardInterrupt):
        harvest_to_disk(Dies(), data, cfg, tmp_path / "resumed", progress=False)
    partial = read_meta(tmp_path / "resumed")
    written = sorted((tmp_path / "resumed").glob("shard_*.json"))  # finished shards' records
    assert not partial["complete"] and 0 < len(written) < len(whole.meta["shards"])
    first = (tmp_path / "resumed" / "shard_00000.safetensors").stat().st_mtime_ns
    resumed = HarvestReader(harvest_to_disk(harvester, data, cfg, tmp_path / "resumed", progress=False))
    assert (tmp_path / "resumed" / "shard_00000.safetensors").stat().st_mtime_ns == first  # not harvested again
    assert resumed.meta["shards"] == whole.meta["shards"]
    everything = torch.arange(len(whole))
    assert torch.equal(resumed.rows(everything)[0], whole.rows(everything)[0])


def test_other_data_cannot_resume_a_harvest(model, text_file, tmp_path) -> None:
    cfg, data, harvester = _setup(model, text_file, "harvest.layer=1")
    harvest_to_disk(harvester, data, cfg, tmp_path / "h", progress=False)
    cfg2, data2, harvester2 = _setup(model, text_file, "harvest.layer=0")
    with pytest.raises(ValueError, match="other data"):
        harvest_to_disk(harvester2, data2, cfg2, tmp_path / "h", progress=False)


def test_shard_source_batches(model, text_file, tmp_path) -> None:
    cfg, data, harvester = _setup(model, text_file, "harvest.layer=1", "harvest.storage_dtype=bfloat16")
    root = harvest_to_disk(harvester, data, cfg, tmp_path / "h", progress=False)
    source = ShardSource(root, seed=5, eval_tokens=100)
    x, _ = source.batch(3, 64)
    assert x.dtype == torch.float32 and x.shape == (64, 1, 64)
    assert torch.equal(torch.cat([source.batch(3, 64, rank=r, world=2)[0] for r in range(2)]), x)
    assert torch.equal(ShardSource(root, seed=5, eval_tokens=100).batch(3, 64)[0], x)  # pure function of step
    train_rows = torch.cat([source.global_indices(s, 64) for s in range(source.n_train // 64)])
    assert int(train_rows.max()) < source.n_train and train_rows.unique().numel() == train_rows.numel()
    held_out = torch.cat([xb for xb, _ in source.eval_batches(100, 64)])
    assert held_out.shape[0] == 100


def test_streaming_source_is_a_pure_function_of_the_step(model, text_file, tmp_path) -> None:
    cfg, data, harvester = _setup(model, text_file, "harvest.layer=1")
    reader = HarvestReader(harvest_to_disk(harvester, data, cfg, tmp_path / "h", progress=False))
    everything = reader.rows(torch.arange(len(reader)))[0]
    stream = StreamingSource(harvester, data, seed=1, batch_size=32, window=4, eval_tokens=64)
    batches = [stream.batch(s, 32)[0] for s in range(6)]
    fresh = StreamingSource(harvester, data, seed=1, batch_size=32, window=4, eval_tokens=64)
    assert torch.equal(fresh.batch(5, 32)[0], batches[5])  # a resumed run re-harvests one chunk
    chunk = torch.cat(batches[:4])[:, 0]
    expected = everything[:128, 0]  # chunk 0 = the first 4 * 32 kept rows, shuffled
    assert torch.equal(chunk[torch.argsort(chunk[:, 0])], expected[torch.argsort(expected[:, 0])])
