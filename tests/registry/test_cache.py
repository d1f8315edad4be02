"""The local cache: verified blobs, atomic snapshots, read-only files, corruption handling."""

from __future__ import annotations

import os
import stat

import pytest

from scope_hub.errors import ConfigError
from scope_hub.loading import load_dictionary
from scope_hub.registry import Registry
from scope_hub.registry.cache import LocalCache, registry_id

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
    blob.write_bytes(b"\xff" + blob.read_bytes()[1:])  # same size, new mtime
    assert reg.pull(KEY) == snapshot  # the warm pull saw the stat change, re-hashed and rebuilt in place
    assert folder_bytes(reg.pull(KEY, verify=True)) == folder_bytes(src)
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


def _flip_byte(path, how: str, offset: int) -> None:
    """Change one byte of ``path`` the way a user or a tool would."""
    path.chmod(0o644)  # cached files are read-only: anyone editing them makes them writable first
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    if how == "rewrite":  # an editor or a script: truncate and write (new mtime, same inode)
        path.write_bytes(bytes(data))
    elif how == "replace":  # write a new file and rename it over the old one (new inode)
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(bytes(data))
        os.replace(fresh, path)
    else:  # in place, then the old mtime put back (what `touch -r` or a careful tool does)
        before = path.stat()
        with open(path, "r+b") as f:
            f.seek(offset)
            f.write(bytes([data[offset]]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_mtime_ns == before.st_mtime_ns


@pytest.mark.parametrize("how", ["rewrite", "replace", "in_place_keeping_mtime"])
@pytest.mark.parametrize("offset", [-1, -40, 200])
def test_a_warm_load_never_serves_a_byte_changed_through_the_filesystem(pushed, tmp_path, how, offset, monkeypatch):
    monkeypatch.delenv("SCOPE_HUB_VERIFY", raising=False)
    url, src = pushed
    reg = Registry(url, cache_dir=tmp_path / "cache", progress=False)
    weights = reg.pull(KEY) / "params.safetensors"
    expected = {k: v.clone() for k, v in load_dictionary(src).state_dict().items()}  # a copy: loads may mmap
    cache = LocalCache(tmp_path / "cache", url)
    weights.chmod(0o644)  # isolate the write itself: a fresh record after the chmod (chmod alone changes ctime)
    cache.record_stat(weights)
    _flip_byte(weights, how, offset % weights.stat().st_size)
    got = load_dictionary(KEY, registry=reg).state_dict()
    assert all(bool((got[name] == value).all()) for name, value in expected.items())
    assert folder_bytes(reg.pull(KEY)) == folder_bytes(src)


def test_corruption_invisible_to_stat_is_caught_only_by_always_verify(pushed, tmp_path, monkeypatch):
    """Bytes changed below the filesystem (bit rot) keep every stat field: the documented limit of a warm load."""
    monkeypatch.delenv("SCOPE_HUB_VERIFY", raising=False)
    url, src = pushed
    reg = Registry(url, cache_dir=tmp_path / "cache", progress=False)
    weights = reg.pull(KEY) / "params.safetensors"
    cache = LocalCache(tmp_path / "cache", url)
    _flip_byte(weights, "in_place_keeping_mtime", 200)
    for path in (weights, *(tmp_path / "cache" / "blobs" / "sha256").iterdir()):
        cache.record_stat(path)  # the records now match the corrupt file: stat cannot tell
    assert folder_bytes(reg.pull(KEY)) != folder_bytes(src)  # served: what the default mode promises not to catch
    monkeypatch.setenv("SCOPE_HUB_VERIFY", "always")
    assert folder_bytes(reg.pull(KEY)) == folder_bytes(src)
    monkeypatch.setenv("SCOPE_HUB_VERIFY", "sometimes")
    with pytest.raises(ConfigError, match="SCOPE_HUB_VERIFY"):
        reg.pull(KEY)


def test_a_warm_pull_reads_only_stat_records_not_the_weights(pushed, tmp_path, monkeypatch):
    monkeypatch.delenv("SCOPE_HUB_VERIFY", raising=False)
    url, _src = pushed
    reg = Registry(url, cache_dir=tmp_path / "cache", progress=False)
    reg.pull(f"{KEY}@v1")
    hashed = []
    import scope_hub.registry.cache as cache_module

    real = cache_module.sha256_file
    monkeypatch.setattr(cache_module, "sha256_file", lambda path: hashed.append(path) or real(path))
    reg.pull(f"{KEY}@v1")
    assert hashed == []
