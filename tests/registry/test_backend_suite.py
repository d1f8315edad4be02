"""The reusable registry suite: every test runs on file://, memory://, s3:// (moto) and hf:// (fake Hub)."""

from __future__ import annotations

import pytest

from scope_hub.errors import (
    ConfigError,
    DictionaryNotFoundError,
    IntegrityError,
    KeyParseError,
    LockfileError,
    OfflineError,
    RegistryError,
    UnknownKeyError,
    UnsafePathError,
    VersionNotFoundError,
)
from scope_hub.registry import Lockfile
from scope_hub.registry.content import manifest_bytes, sha256_bytes
from scope_hub.registry.layout import blob_path

from .conftest import manifest_store_path
from .helpers import KEY, LICENSE, folder_bytes, make_dictionary

OTHER = "google/gemma-3-270m:mlp_out/layer_3/width_8/sae/l0_small"


def test_push_then_pull_returns_the_same_bytes(harness, tmp_path):
    src = make_dictionary(tmp_path / "d", seed=1, card="# SAE\nhello")
    result = harness.registry().push(src, KEY)
    assert (result.version, result.created, result.key) == (1, True, KEY)
    pulled = harness.registry(fresh_cache=True).pull(KEY)
    assert folder_bytes(pulled) == folder_bytes(src)  # every file but the card, byte for byte
    card = (pulled / "README.md").read_text()  # the card: rendered from the source for v1
    assert "hello" in card and f"{KEY}@v1" in card and f"license: {LICENSE}" in card
    assert pulled.name == "v1"


def test_identical_repush_is_a_noop_and_changed_content_is_a_new_version(harness, tmp_path):
    reg = harness.registry()
    src = make_dictionary(tmp_path / "d", seed=1)
    first = reg.push(src, KEY)
    again = reg.push(src, KEY)
    assert (again.version, again.created, again.manifest_sha256) == (1, False, first.manifest_sha256)
    carded = reg.push(src, KEY, card=_card(tmp_path, f"---\nlicense: {LICENSE}\n---\n# now with a card"))
    assert (carded.version, carded.created) == (2, True)  # same weights, another card source
    assert reg.resolve(KEY).card == "README.md"
    assert reg.push(src, KEY, card=tmp_path / "card.md").created is False


def _card(tmp_path, text):
    path = tmp_path / "card.md"
    path.write_text(text)
    return path


def test_versions_are_monotonic_and_every_ref_form_resolves(harness, tmp_path):
    reg = harness.registry()
    folders = [make_dictionary(tmp_path / f"d{i}", seed=i) for i in range(3)]
    results = [reg.push(f, KEY) for f in folders]
    assert [r.version for r in results] == [1, 2, 3]
    assert reg.resolve(KEY).version == 3 and reg.resolve(f"{KEY}@latest").version == 3
    assert folder_bytes(reg.pull(f"{KEY}@v2")) == folder_bytes(folders[1])
    by_content = reg.resolve(f"{KEY}@sha256:{results[0].content_sha256[:12]}")
    assert by_content.version == 1 and by_content.content_sha256 == results[0].content_sha256
    with pytest.raises(VersionNotFoundError):
        reg.resolve(f"{KEY}@sha256:{'0' * 12}")
    with pytest.raises(VersionNotFoundError, match="available: v1, v2, v3"):
        reg.pull(f"{KEY}@v9")
    with pytest.raises(UnknownKeyError):
        reg.pull(OTHER)
    with pytest.raises(UnknownKeyError, match="has no versions"):
        reg.pull(f"{OTHER}@v1")


def test_list_matches_fnmatch_patterns_over_canonical_keys(harness, tmp_path):
    reg = harness.registry()
    reg.push(make_dictionary(tmp_path / "a", seed=1), KEY)
    reg.push(make_dictionary(tmp_path / "b", seed=2, key=OTHER), OTHER)
    reg.push(make_dictionary(tmp_path / "c", seed=3, key=OTHER), OTHER)
    listed = {s.key: s for s in reg.list()}
    assert set(listed) == {KEY, OTHER}
    assert (listed[OTHER].latest, listed[OTHER].versions) == (2, 2)
    assert [s.key for s in reg.list("*:mlp_out/*")] == [OTHER]
    assert [s.key for s in reg.list("*/layer_6/*")] == [KEY]
    assert reg.list("nothing*") == []


def test_info_shows_versions_sizes_config_and_card(harness, tmp_path):
    reg = harness.registry()
    src = make_dictionary(tmp_path / "a", seed=1, card="# Layer 6 SAE\ntrained on chat data")
    reg.push(src, KEY)
    reg.push(make_dictionary(tmp_path / "b", seed=2), KEY)
    info = reg.info(KEY)
    assert (info.latest, [v.version for v in info.versions]) == (2, [1, 2])
    card_size = next(f.size for f in info.versions[0].files if f.path == "README.md")
    assert info.versions[0].size == sum(len(b) for b in folder_bytes(src).values()) + card_size
    assert info.config["d_sae"] == 8 and f"{KEY}@v2" in info.card and "chat data" not in info.card  # v2's own card
    assert "trained on chat data" in reg.info(f"{KEY}@v1").card


def test_yank_skips_latest_but_keeps_exact_pins(harness, tmp_path):
    reg = harness.registry()
    folders = [make_dictionary(tmp_path / f"d{i}", seed=i) for i in range(3)]
    for f in folders:
        reg.push(f, KEY)
    reg.yank(f"{KEY}@v3")
    assert reg.resolve(KEY).version == 2
    assert folder_bytes(harness.registry(fresh_cache=True).pull(f"{KEY}@v3")) == folder_bytes(folders[2])
    assert {s.key: s.latest for s in reg.list()}[KEY] == 2
    reg.yank(f"{KEY}@v3")  # idempotent
    assert reg.push(folders[2], KEY).version == 4  # re-publishing yanked content makes a new version
    for version in (1, 2, 4):
        reg.yank(f"{KEY}@v{version}")
    with pytest.raises(VersionNotFoundError, match="yanked"):
        reg.resolve(KEY)
    assert reg.resolve(f"{KEY}@v1").version == 1
    with pytest.raises(KeyParseError):
        reg.yank(KEY)


def test_lockfile_pins_exact_bytes_and_refuses_a_changed_registry(harness, tmp_path):
    reg = harness.registry()
    v1 = make_dictionary(tmp_path / "v1", seed=1)
    reg.push(v1, KEY)
    lock_path = tmp_path / "scope.lock"
    reg.lock([KEY], lock_path)
    reg.push(make_dictionary(tmp_path / "v2", seed=2), KEY)
    lock = Lockfile.load(lock_path)
    assert [(e.key, e.version, e.registry) for e in lock.entries] == [(KEY, 1, reg.url)]
    assert folder_bytes(harness.registry(fresh_cache=True).pull(KEY, lock=lock_path)) == folder_bytes(v1)
    with pytest.raises(LockfileError):
        reg.pull(f"{KEY}@v2", lock=lock_path)
    with pytest.raises(LockfileError):
        reg.pull(OTHER, lock=lock_path)
    harness.reset()  # the registry is wiped and v1 re-published with other content
    harness.registry().push(make_dictionary(tmp_path / "imposter", seed=9), KEY)
    with pytest.raises(LockfileError, match="no longer matches"):
        harness.registry(fresh_cache=True).pull(KEY, lock=lock_path)


def test_corrupted_file_is_detected_by_pull_and_verify(harness, tmp_path):
    reg = harness.registry()
    reg.push(make_dictionary(tmp_path / "a", seed=1), KEY)
    reg.push(make_dictionary(tmp_path / "b", seed=2, key=OTHER), OTHER)
    harness.corrupt_file(KEY, 1, "params.safetensors")  # same size, other bytes: only a hash notices
    with pytest.raises(IntegrityError, match="corrupt"):
        harness.registry(fresh_cache=True).pull(KEY)
    report = reg.verify()
    assert not report.ok and any("params.safetensors" in p or "corrupt" in p for p in report.problems)
    assert folder_bytes(harness.registry(fresh_cache=True).pull(OTHER))  # other keys unaffected


def test_verify_reports_a_card_that_disagrees_with_its_manifest(store_harness, tmp_path):
    """A card rewritten to record another params hash, its blob and manifest entry made to match:
    every blob is intact, so only comparing the card with the manifest notices (as pull does)."""
    reg = store_harness.registry()
    reg.push(make_dictionary(tmp_path / "a", seed=1), KEY)
    reg.push(make_dictionary(tmp_path / "b", seed=2, key=OTHER), OTHER)
    clean = reg.verify()
    assert clean.ok and clean.cards_checked == 2
    store, manifest = reg.backend.store, reg.resolve(f"{KEY}@v1")
    params = next(e for e in manifest.files if e.path == "params.safetensors")
    card_entry = next(e for e in manifest.files if e.path == manifest.card)
    card = store.read_bytes(blob_path(card_entry.sha256))
    forged = card.replace(params.sha256.encode(), b"f" * 64)
    assert forged != card, "the card records the full sha256 of params.safetensors"
    store.put_bytes(blob_path(sha256_bytes(forged)), forged)
    files = [
        e.model_copy(update={"sha256": sha256_bytes(forged), "size": len(forged)}) if e is card_entry else e
        for e in manifest.files
    ]
    store.put_bytes(manifest_store_path(KEY, 1), manifest_bytes(manifest.model_copy(update={"files": files})))

    report = reg.verify()
    assert report.cards_checked == 2 and report.problems == [
        f"{KEY}@v1: the card disagrees with the manifest: {KEY}@v1/params.safetensors: "
        f"sha256 {params.sha256[:16]} but the card records {'f' * 16}"
    ]
    with pytest.raises(IntegrityError, match="its card disagrees with its files"):
        store_harness.registry(fresh_cache=True).pull(KEY)


def test_warm_pinned_pull_makes_no_request_and_warm_latest_one(harness, tmp_path):
    reg = harness.registry()
    reg.push(make_dictionary(tmp_path / "a", seed=1), KEY)
    puller = harness.registry(fresh_cache=True)
    first = puller.pull(f"{KEY}@v1")
    before = harness.requests(puller)
    assert puller.pull(f"{KEY}@v1") == first
    assert harness.requests(puller) == before
    puller.pull(KEY)
    before = harness.requests(puller)
    puller.pull(KEY)
    assert harness.requests(puller) - before == 1  # one listing of the key's versions


def test_offline_mode_serves_the_cache_or_fails_clearly(harness, tmp_path, monkeypatch):
    reg = harness.registry()
    reg.push(make_dictionary(tmp_path / "a", seed=1), KEY)
    reg.push(make_dictionary(tmp_path / "b", seed=2), KEY)
    online = reg.pull(f"{KEY}@v1")
    latest = reg.pull(KEY)
    monkeypatch.setenv("SCOPE_HUB_OFFLINE", "1")
    offline = harness.registry()
    assert offline.pull(f"{KEY}@v1") == online and offline.pull(KEY) == latest
    with pytest.raises(OfflineError):
        offline.pull(OTHER)
    with pytest.raises(OfflineError):
        offline.push(make_dictionary(tmp_path / "c", seed=3), KEY)
    if harness.kind == "hf":  # hf:// also serves what the Hugging Face cache holds
        assert folder_bytes(harness.registry(fresh_cache=True).pull(f"{KEY}@v1")) == folder_bytes(online)
    else:
        with pytest.raises(OfflineError):
            harness.registry(fresh_cache=True).pull(f"{KEY}@v1")


def test_gc_removes_only_unreferenced_blobs(harness, tmp_path):
    reg = harness.registry()
    a, b = make_dictionary(tmp_path / "a", seed=1), make_dictionary(tmp_path / "b", seed=2)
    reg.push(a, KEY)
    reg.push(b, KEY)
    reg.yank(f"{KEY}@v1")
    if harness.kind != "hf":
        reg.backend.store.put_bytes("blobs/sha256/" + "e" * 64, b"orphan from a crashed push")
    assert reg.gc(grace_seconds=3600).deleted == []  # too young: might belong to a push in flight
    report = reg.gc(grace_seconds=0)
    assert report.deleted == ([] if harness.kind == "hf" else ["blobs/sha256/" + "e" * 64])
    fresh = harness.registry(fresh_cache=True)
    assert folder_bytes(fresh.pull(f"{KEY}@v1")) == folder_bytes(a)
    assert folder_bytes(fresh.pull(KEY)) == folder_bytes(b)
    assert reg.verify().ok


def test_reindex_rebuilds_the_same_listing(harness, tmp_path):
    reg = harness.registry()
    reg.push(make_dictionary(tmp_path / "a", seed=1), KEY)
    reg.push(make_dictionary(tmp_path / "b", seed=2), KEY)
    reg.push(make_dictionary(tmp_path / "c", seed=3, key=OTHER), OTHER)
    reg.yank(f"{KEY}@v2")
    before = reg.list()
    assert reg.reindex() == 3
    assert reg.list() == before
    assert {s.key: s.latest for s in before} == {KEY: 1, OTHER: 1}


def test_pull_to_copies_the_files(harness, tmp_path):
    reg = harness.registry()
    src = make_dictionary(tmp_path / "a", seed=1)
    reg.push(src, KEY)
    out = reg.pull(KEY, to=tmp_path / "out")
    assert out == tmp_path / "out" and folder_bytes(out) == folder_bytes(src)


def test_bad_input_is_refused_before_anything_is_written(harness, tmp_path):
    reg = harness.registry()
    odd = make_dictionary(tmp_path / "odd", seed=1)
    (odd / "bad name.bin").write_bytes(b"x")
    with pytest.raises(UnsafePathError):
        reg.push(odd, KEY)
    nested = make_dictionary(tmp_path / "nested", seed=1)
    (nested / "sub").mkdir()
    with pytest.raises(RegistryError, match="flat"):
        reg.push(nested, KEY)
    broken = make_dictionary(tmp_path / "broken", seed=1)
    (broken / "config.json").write_text('{"type": "sae"}')
    with pytest.raises(ConfigError):
        reg.push(broken, KEY)
    with pytest.raises(ConfigError, match="type"):
        reg.push(make_dictionary(tmp_path / "tc", seed=1), KEY.replace("/sae", "/transcoder"))
    with pytest.raises(DictionaryNotFoundError):
        reg.push(tmp_path / "missing", KEY)
    with pytest.raises(UnsafePathError):
        reg.push(make_dictionary(tmp_path / "ok", seed=1), "evil..model:resid_post/layer_1/width_16k/sae")
    with pytest.raises(KeyParseError):
        reg.push(make_dictionary(tmp_path / "ok2", seed=1), f"{KEY}@v3")
    if harness.kind == "hf":
        with pytest.raises(RegistryError, match="not found"):  # not even the repo was created
            reg.list()
    else:
        assert reg.list() == [] and reg.backend.store.walk("") == []
