"""The local cache: verified blobs, atomic snapshots, read-only files, corruption handling."""

from __future__ import annotations

import os
import stat

import pytest

from scope_hub.registry import Registry
from scope_hub.registry.cache import registry_id

from .helpers import KEY, folder_bytes, make_dictionary


@pytest.fixture
def pushed(tmp_path):
    url = (tmp_path / "registry").as_uri()
    src = make_dictionary(tmp_path / "v1", seed=1)
    Registry(url, progress=False).push(src, KEY)
    return url, src


def test_layout_blobs_are_read_only_and_snapshots_are_hardlinks(pushed, tmp_path):
    url, _src = pushed
    reg = Registry(url, cache_dir=tmp_path / "cache", progress=False)
    snapshot = reg.pull(KEY)
    assert snapshot == tmp_path / "cache" / "registries" / registry_id(url) / "snapshots" / parse_path() / "v1"
    for name in ("config.json", "params.safetensors"):
        st = (snapshot / name).stat()
        assert st.st_nlink == 2 and not st.st_mode & stat.S_IWUSR  # one blob, two names, no writes
    assert os.listdir(tmp_path / "cache" / "tmp") == []  # nothing half-done left behind


def parse_path() -> str:
    from scope_hub.keys import parse_key

    return parse_key(KEY).path


def test_blobs_are_shared_between_versions_and_registries(pushed, tmp_path):
    url, src = pushed
    other = (tmp_path / "other-registry").as_uri()
    Registry(other, progress=False).push(src, KEY)
    cache = tmp_path / "cache"
    Registry(url, cache_dir=cache, progress=False).pull(KEY)
    second = Registry(other, cache_dir=cache, progress=False)
    second.pull(KEY)
    # the manifest, and the card (it names its registry): config and weights were already cached
    assert second.backend.store.stats["get"] == 2
    assert len(os.listdir(cache / "blobs" / "sha256")) == 4


def test_a_corrupted_cache_is_caught_by_verify_and_healed_by_the_next_pull(pushed, tmp_path):
    url, src = pushed
    reg = Registry(url, cache_dir=tmp_path / "cache", progress=False)
    snapshot = reg.pull(KEY)
    blob = next(
        p
        for p in (tmp_path / "cache" / "blobs" / "sha256").iterdir()
        if p.stat().st_size == (src / "params.safetensors").stat().st_size
    )
    blob.chmod(0o644)
    blob.write_bytes(b"\xff" + blob.read_bytes()[1:])  # bit rot, same size
    assert reg.pull(KEY) == snapshot  # a plain warm pull trusts sizes (fast path) ...
    assert folder_bytes(reg.pull(KEY, verify=True)) == folder_bytes(src)  # ... --verify re-hashes and heals
    blob = next(
        p
        for p in (tmp_path / "cache" / "blobs" / "sha256").iterdir()
        if p.stat().st_size == (src / "params.safetensors").stat().st_size
    )
    blob.chmod(0o644)
    blob.write_bytes(b"\xff" + blob.read_bytes()[1:])
    report = reg.verify(cache=True)
    assert len(report.problems) == 1 and "cached blob" in report.problems[0]
    assert folder_bytes(reg.pull(KEY)) == folder_bytes(src)  # the corrupt copy and its links are gone


def test_a_deleted_snapshot_file_is_rebuilt(pushed, tmp_path):
    url, src = pushed
    reg = Registry(url, cache_dir=tmp_path / "cache", progress=False)
    snapshot = reg.pull(KEY)
    (snapshot / "params.safetensors").unlink()
    assert folder_bytes(reg.pull(KEY)) == folder_bytes(src)
