"""Checkpoints: safetensors + JSON only, atomic, pruned, and a faithful round trip of trainer state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import trainers.checkpoint as checkpoint
from scope_hub.errors import IntegrityError
from tests.registry.conftest import moto_endpoint, s3_bucket  # noqa: F401  (fixtures: a moto S3 server)
from tests.trainers.helpers import config
from trainers.checkpoint import latest_checkpoint, list_checkpoints, save_checkpoint
from trainers.sources import SyntheticSource
from trainers.synthetic import PlantedDictionary
from trainers.trainer import Trainer


def test_only_safetensors_and_json_and_pruning(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"param/w": torch.full((2,), float(step))}, {"step": step}, keep=2)
    found = list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step_000000002", "step_000000003"]
    assert sorted(f.name for f in found[-1].iterdir()) == ["state.json", "tensors.safetensors"]
    state = json.loads((found[-1] / "state.json").read_text())
    assert state["step"] == 3 and list(state["files"]) == ["tensors.safetensors"]


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, 1, {"param/w": torch.ones(2)}, {"step": 1})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, {"param/w": torch.zeros(2)}, {"step": 2})
    assert latest_checkpoint(tmp_path).state["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000001"]  # no staging folder left behind


def test_trainer_state_round_trips(tmp_path: Path) -> None:
    overrides = [
        "dictionary.architecture=topk",
        "dictionary.k=3",
        "train.tokens=20480",
        "train.batch_size=512",
        f"train.checkpoint_dir={tmp_path}",
        "train.checkpoint_every=1000",
        "loss.dead_tokens=1024",
    ]
    cfg = config(*overrides)
    planted = PlantedDictionary.create(n_atoms=64, d_in=32, active_per_token=3, seed=1)
    first = Trainer(cfg, SyntheticSource(planted))
    first.run()
    again = Trainer(cfg, SyntheticSource(planted))  # resumes from the final checkpoint
    assert again.step == first.step == cfg.steps
    for (name, p), q in zip(first.dictionary.named_parameters(), again.dictionary.parameters()):
        assert torch.equal(p, q) and p.stride() == q.stride(), name
    for p, q in zip(first.optimizer.state.values(), again.optimizer.state.values()):
        assert all(torch.equal(p[k], q[k]) and p[k].stride() == q[k].stride() for k in p)
    assert torch.equal(first.tokens_since_fired, again.tokens_since_fired)
    assert first.scale_in == again.scale_in and first.density == again.density


def test_a_checkpoint_of_another_config_is_refused(tmp_path: Path) -> None:
    planted = PlantedDictionary.create(n_atoms=64, d_in=32, seed=1)
    base = [
        "dictionary.architecture=relu",
        "train.tokens=2048",
        "train.batch_size=512",
        f"train.checkpoint_dir={tmp_path}",
    ]
    Trainer(config(*base), SyntheticSource(planted)).run()
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(config(*base, "optim.lr=0.5"), SyntheticSource(planted))


def test_resampling_revives_dead_latents() -> None:
    # dead_tokens below one batch: every latent that did not fire in the last step is resampled
    cfg = config(
        "dictionary.architecture=relu",
        "loss.l1_coefficient=3.0",
        "train.tokens=20480",
        "train.batch_size=512",
        "loss.resample_every=10",
        "loss.dead_tokens=512",
    )
    planted = PlantedDictionary.create(n_atoms=64, d_in=32, active_per_token=3, seed=1)
    trainer = Trainer(cfg, SyntheticSource(planted))
    w_before = trainer.dictionary.w_dec.detach().clone()
    trainer.tokens_since_fired[0, :8] = 10**9  # pretend 8 latents have long been dead
    with torch.no_grad():
        trainer.dictionary.b_enc[:8] = -100.0  # and make sure they stay silent until resampled
    trainer.run()
    assert not torch.equal(trainer.dictionary.w_dec[:8], w_before[:8])
    assert float(trainer.dictionary.b_enc[:8].detach().max()) > -100.0
    assert torch.allclose(trainer.dictionary.w_dec.detach().norm(dim=1), torch.ones(64), atol=1e-4)


def test_checkpoints_on_s3_resume_and_survive_a_failed_upload(s3_bucket: str, monkeypatch) -> None:  # noqa: F811
    """The same checkpoints on a real S3 protocol server (moto): resume, hashes, and an upload that dies."""
    import fsspec

    root = f"s3://{s3_bucket}/runs/topk"
    cfg = config(
        "dictionary.architecture=topk",
        "dictionary.k=3",
        "train.tokens=4096",
        "train.batch_size=512",
        f"train.checkpoint_dir={root}",
        "train.checkpoint_every=4",
        "loss.dead_tokens=1024",
    )
    planted = PlantedDictionary.create(n_atoms=64, d_in=32, active_per_token=3, seed=1)
    first = Trainer(cfg, SyntheticSource(planted))
    first.run()
    assert [str(p).rsplit("/", 1)[-1] for p in list_checkpoints(root)] == ["step_000000004", "step_000000008"]
    again = Trainer(cfg, SyntheticSource(planted))  # resumed from the bucket
    assert again.step == cfg.steps
    for (name, p), q in zip(first.dictionary.named_parameters(), again.dictionary.parameters()):
        assert torch.equal(p, q), name

    fs = fsspec.core.url_to_fs(root)[0]  # the (cached) instance the checkpoints use
    real_put = fs.put_file

    def dies_mid_upload(lpath, rpath, *args, **kwargs):
        if rpath.endswith("state.json"):
            raise OSError("connection reset")  # the tensors landed, the commit marker did not
        return real_put(lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(fs, "put_file", dies_mid_upload)
    with pytest.raises(OSError):
        save_checkpoint(root, 9, {"param/w": torch.zeros(2)}, {"step": 9})
    monkeypatch.undo()
    assert latest_checkpoint(root).state["step"] == 8  # step 9 has tensors but no marker: not a checkpoint
    fs.invalidate_cache()
    shard = f"{s3_bucket}/runs/topk/step_000000008/tensors.safetensors"
    fs.pipe_file(shard, fs.cat_file(shard)[:-1] + b" ")  # a store that altered the bytes
    with pytest.raises(IntegrityError, match="sha256"):
        latest_checkpoint(root)
