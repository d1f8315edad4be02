"""The index: constant store reads for ls/resolve, safe compaction, stale index repaired by reindex."""

from __future__ import annotations

import pytest

from scope_hub.errors import RegistryError
from scope_hub.keys import parse_key
from scope_hub.registry import Registry
from scope_hub.registry.content import build_manifest, manifest_bytes, stage_folder
from scope_hub.registry.index import COMPACT_AFTER, StoreIndex
from scope_hub.registry.layout import INDEX_LOG, INDEX_SNAPSHOTS, manifest_path

from .helpers import KEY, make_dictionary


def _fill(reg: Registry, n: int, folder) -> None:
    for i in range(n):
        key = f"google/gemma-3-270m:resid_post/layer_{i}/width_8/sae"
        reg.push(make_dictionary(folder / str(i), seed=1, key=key), key)


@pytest.mark.parametrize("n", [5, 120])
def test_ls_and_resolve_cost_a_constant_number_of_reads(n, tmp_path):
    reg = Registry(f"memory://index-{n}-{tmp_path.name}", cache_dir=tmp_path / "c", progress=False)
    _fill(reg, n, tmp_path / "d")
    store = reg.backend.store
    before = store.reads
    assert len(reg.list()) == n
    ls_reads = store.reads - before
    assert ls_reads <= 3 + COMPACT_AFTER  # list(log) + list(snapshots) + get(snapshot) + pending segments
    before = store.reads
    reg.resolve("google/gemma-3-270m:resid_post/layer_3/width_8/sae")
    assert store.reads - before == 2  # list the key's versions + get its manifest
    before = store.reads
    reg.resolve("google/gemma-3-270m:resid_post/layer_3/width_8/sae@v1")
    assert store.reads - before == 0  # immutable manifest: served from the cache


def test_compaction_folds_segments_and_racing_compactors_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPE_HUB_INDEX_COMPACT_AFTER", "1000")  # no compaction during the pushes
    reg = Registry(f"memory://compact-{tmp_path.name}", cache_dir=tmp_path / "c", progress=False)
    _fill(reg, 12, tmp_path / "d")
    store = reg.backend.store
    assert len(store.list_names(INDEX_LOG)) == 12
    a, b = StoreIndex(store), StoreIndex(store)
    index_a, snap_a, pending_a = a.load_full()
    index_b, snap_b, pending_b = b.load_full()
    assert a._write_snapshot(index_a, snap_a.generation + 1, pending_a)
    assert not b._write_snapshot(index_b, snap_b.generation + 1, pending_b)  # same generation: loser stops
    assert store.list_names(INDEX_LOG) == [] and store.list_names(INDEX_SNAPSHOTS) == ["g000000000001.json"]
    assert len(reg.list()) == 12
    reg.push(make_dictionary(tmp_path / "e", seed=2), f"{KEY}/l0_big")
    assert StoreIndex(store).compact_if_needed(threshold=0)
    assert len(reg.list()) == 13 and store.list_names(INDEX_LOG) == []


def test_a_reader_racing_a_compaction_reloads(tmp_path):
    reg = Registry(f"memory://race-{tmp_path.name}", cache_dir=tmp_path / "c", progress=False)
    _fill(reg, 3, tmp_path / "d")
    store = reg.backend.store
    index = StoreIndex(store)
    real_read, compacted = store.read_bytes, []

    def read_during_compaction(path):
        if path.startswith(INDEX_LOG) and not compacted:  # another process compacts between list and read
            compacted.append(None)
            store.read_bytes = real_read  # the compactor reads normally
            compacted[0] = StoreIndex(store).compact_if_needed(threshold=0)
        return real_read(path)

    store.read_bytes = read_during_compaction
    assert len(index.load().keys) == 3 and compacted == [True]


def test_a_version_missing_from_the_index_is_still_resolved_and_reindex_repairs_ls(tmp_path):
    url = (tmp_path / "registry").as_uri()
    reg = Registry(url, progress=False)
    reg.push(make_dictionary(tmp_path / "v1", seed=1), KEY)
    staged = stage_folder(make_dictionary(tmp_path / "v2", seed=2), parse_key(KEY))
    for f in staged.files:  # a pusher that died right after writing its manifest: no index segment
        reg.backend.store.put_file(f"blobs/sha256/{f.sha256}", f.local)
    reg.backend.store.create_bytes(manifest_path(parse_key(KEY), 2), manifest_bytes(build_manifest(staged, 2)))
    assert reg.resolve(KEY).version == 2  # resolution lists manifests: a stale index hides nothing here
    assert [s.latest for s in reg.list()] == [1]  # ls reads the index: stale until repaired
    assert reg.reindex() == 2
    assert [(s.latest, s.versions) for s in reg.list()] == [(2, 2)]


def test_a_corrupt_snapshot_is_reported_and_reindex_replaces_it(tmp_path):
    reg = Registry((tmp_path / "registry").as_uri(), progress=False)
    _fill(reg, 2, tmp_path / "d")
    StoreIndex(reg.backend.store).compact_if_needed(threshold=0)
    reg.backend.store.put_bytes(f"{INDEX_SNAPSHOTS}/g000000000001.json", b"{not json")
    with pytest.raises(RegistryError, match="reindex"):
        reg.list()
    assert reg.reindex() == 2 and len(reg.list()) == 2


def test_sha_refs_use_the_index_and_fall_back_to_manifests(tmp_path):
    reg = Registry((tmp_path / "registry").as_uri(), progress=False)
    first = reg.push(make_dictionary(tmp_path / "v1", seed=1), KEY)
    reg.push(make_dictionary(tmp_path / "v2", seed=2), KEY)
    assert reg.resolve(f"{KEY}@sha256:{first.content_sha256[:16]}").version == 1
    for name in reg.backend.store.walk("index"):
        reg.backend.store.delete(name)  # index gone entirely
    fresh = Registry(reg.url, cache_dir=tmp_path / "fresh", progress=False)
    assert fresh.resolve(f"{KEY}@sha256:{first.content_sha256[:16]}").version == 1
