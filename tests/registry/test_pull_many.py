"""``Registry.pull_many``: every key's files in flight together, same folders and checks as ``pull``."""

from __future__ import annotations

import os

import pytest

from scope_hub.errors import IntegrityError
from scope_hub.keys import parse_key

from .helpers import folder_bytes, make_dictionary

KEYS = [f"google/gemma-3-270m:resid_post/layer_{i}/width_8/sae" for i in range(3)]


def _push_all(harness, tmp_path):
    reg = harness.registry()
    sources = [make_dictionary(tmp_path / f"src{i}", seed=i, key=key) for i, key in enumerate(KEYS)]
    for src, key in zip(sources, KEYS):
        reg.push(src, key)
    return sources


def test_pull_many_gives_what_pull_gives(harness, tmp_path):
    sources = _push_all(harness, tmp_path)
    many = harness.registry(fresh_cache=True).pull_many([f"{k}@v1" for k in KEYS], threads=4)
    one_by_one = harness.registry(fresh_cache=True)
    for key, src, folder in zip(KEYS, sources, many):
        assert folder_bytes(folder) == folder_bytes(src)
        assert folder_bytes(folder, card=True) == folder_bytes(one_by_one.pull(f"{key}@v1"), card=True)
    warm = harness.registry(fresh_cache=False)
    assert warm.pull_many(KEYS) == [warm.pull(k) for k in KEYS]


def test_pull_many_refuses_a_corrupt_file_and_leaves_nothing_half_done(harness, tmp_path):
    _push_all(harness, tmp_path)
    harness.corrupt_file(KEYS[1], 1, "params.safetensors")
    reg = harness.registry(fresh_cache=True)
    with pytest.raises(IntegrityError, match="corrupt"):
        reg.pull_many(KEYS)
    assert not reg.cache.snapshot_dir(parse_key(KEYS[1]), 1).exists()
    assert os.listdir(reg.cache.root / "tmp") == []
