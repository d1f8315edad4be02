"""A published dictionary folder appears (or is replaced) in one step together with its feature statistics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scope_hub.dictionaries import Dictionary
from scope_hub.feature_stats import FILE, FeatureStats
from scope_hub.testing.dictionaries import make_config, make_dictionary
from trainers.publish import save_dictionary_folder


def _measured(seed: int) -> Dictionary:
    """A dictionary carrying feature statistics, as evaluation leaves it."""
    dictionary = make_dictionary(make_config("sae", "relu", d_in=6, d_sae=16), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    dictionary.feature_stats = FeatureStats(
        max=torch.rand(16, generator=gen),
        mean_active=torch.rand(16, generator=gen),
        frequency=torch.rand(16, generator=gen),
        tokens=100 + seed,
        site_norm=3.0,
    )
    return dictionary


def _fail_to_write_statistics(self: FeatureStats, folder: object) -> Path:
    raise OSError("no space left on device")


def test_statistics_arrive_with_the_weights_or_the_old_folder_stays(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "sae"
    first = _measured(seed=1)
    save_dictionary_folder(first, folder, "card one")
    stats = FeatureStats.load(folder)
    assert stats is not None and stats.tokens == 101
    assert torch.equal(stats.frequency, first.feature_stats.frequency)
    assert torch.equal(Dictionary.from_pretrained(folder).w_enc, first.w_enc)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert sorted(before) == ["README.md", "config.json", FILE, "params.safetensors"]

    monkeypatch.setattr(FeatureStats, "save", _fail_to_write_statistics)
    with pytest.raises(OSError, match="no space left"):
        save_dictionary_folder(_measured(seed=2), folder, "card two")
    # the failed write changed nothing: the old weights still sit beside their own statistics
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert torch.equal(load_file(str(folder / "params.safetensors"))["w_enc"], first.w_enc)
    with pytest.raises(OSError, match="no space left"):
        save_dictionary_folder(_measured(seed=3), tmp_path / "fresh", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no folder without statistics, no leftovers
