"""Whole Gemma Scope 1/2 releases into a real registry (memory:// and file://), from a folder or the Hub."""

from __future__ import annotations

import json
import shutil
import uuid

import huggingface_hub.constants as hf_constants  # imported now: it freezes HF_HUB_OFFLINE at import
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scope_hub.dictionaries import Dictionary
from scope_hub.interop import import_gemma_scope_1, import_gemma_scope_2, key_for
from scope_hub.registry import Registry
from tests.interop.release_fixtures import GS2_EXPECTED, GS2_FAILURES, make_gs1_release, make_gs2_release


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    for name in ("SCOPE_HUB_OFFLINE", "HF_HUB_OFFLINE", "HF_TOKEN", "SCOPE_HUB_REGISTRY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCOPE_HUB_CACHE", str(tmp_path / "scope-cache"))
    monkeypatch.setenv("CI", "1")


@pytest.fixture(params=["memory", "file"])
def registry(request, tmp_path):
    url = f"memory://interop-{uuid.uuid4().hex[:8]}" if request.param == "memory" else (tmp_path / "reg").as_uri()
    return Registry(url, cache_dir=tmp_path / "cache", progress=False)


def _by_folder(report):
    return {r.folder: r for r in report.results}


def test_gemma_scope_2_release_maps_every_folder_to_its_key(tmp_path, registry):
    root = make_gs2_release(tmp_path)
    report = import_gemma_scope_2(root, registry)
    got = _by_folder(report)
    assert set(got) == set(GS2_EXPECTED) | set(GS2_FAILURES)
    for folder, (status, key) in GS2_EXPECTED.items():
        assert (got[folder].status, got[folder].key) == (status, key), folder
    for folder, words in GS2_FAILURES.items():
        assert got[folder].status == "failed" and words in got[folder].reason, (folder, got[folder].reason)
    assert not report.ok and len(report.failed) == len(GS2_FAILURES)
    assert "FAILED resid_post/banana" in report.summary()
    published = {r.key for r in report.of("published")}
    assert published == {k for s, k in GS2_EXPECTED.values() if s == "published"}
    assert {s.key for s in registry.list()} == published


def test_pulled_dictionaries_carry_the_release_facts_and_weights(tmp_path, registry):
    root = make_gs2_release(tmp_path, malformed=False)
    import_gemma_scope_2(root, registry)
    key = "google/gemma-3-270m:mlp/layer_9/width_16k/skip_transcoder/l0_small_affine"
    st = Dictionary.from_pretrained(registry.pull(key))
    c = st.config
    assert (c.type, c.model, c.site, c.site_out, c.layer, c.width_label, c.variant, c.l0_target) == (
        "skip_transcoder",
        "google/gemma-3-270m",
        "mlp_in",
        "mlp_out",
        9,
        "16k",
        "l0_small_affine",
        17,
    )
    assert c.provenance.source_uri == "hf://google/gemma-scope-2-270m-pt/transcoder/layer_9_width_16k_l0_small_affine"
    original = load_file(str(root / "transcoder/layer_9_width_16k_l0_small_affine/params.safetensors"))
    for name, tensor in original.items():
        assert torch.equal(getattr(st, name), tensor), name
    # CLT: full-width decoders were cut to the layers each source layer writes to
    clt = Dictionary.from_pretrained(registry.pull("google/gemma-3-270m:mlp/layer_all/width_262k/clt/l0_medium_affine"))
    full = load_file(str(root / "clt/width_262k_l0_medium_affine/params_layer_1.safetensors"))["w_dec"]
    assert clt.w_dec(1).shape == (32, 2, 16) and torch.equal(clt.w_dec(1), full[:, 1:])
    # crosscoder: concatenated tensors were split per layer
    cc = Dictionary.from_pretrained(
        registry.pull("google/gemma-3-270m:resid_post/layer_5-9-12-15/width_65k/crosscoder/l0_medium")
    )
    flat = load_file(str(root / "crosscoder/width_65k_l0_medium/params.safetensors"))
    assert cc.config.layers == [5, 9, 12, 15] and torch.equal(cc.w_enc.reshape(64, 32), flat["w_enc"])


def test_reimport_is_a_no_op_and_resumes_after_failures(tmp_path, registry):
    root = make_gs2_release(tmp_path, malformed=False)
    calls = []

    class Flaky:  # the registry fails on the 3rd push (a network error, a full disk ...)
        def push(self, folder, key, card=None):
            calls.append(str(key))
            if len(calls) == 3:
                raise OSError("connection reset")
            return registry.push(folder, key, card=card)

    first = import_gemma_scope_2(root, Flaky())
    assert len(first.failed) == 1 and "connection reset" in first.failed[0].reason
    second = import_gemma_scope_2(root, registry)
    assert second.ok
    assert [r.folder for r in second.of("published")] == [r.folder for r in first.failed]
    assert len(second.of("unchanged")) == len(first.of("published"))
    third = import_gemma_scope_2(root, registry)
    assert third.counts() == {"unchanged": len(first.of("published")) + 1, "alias": 1}
    assert all(s.latest == 1 for s in registry.list()), "no re-run created a second version"


def test_include_dry_run_and_changed_weights(tmp_path, registry):
    root = make_gs2_release(tmp_path, malformed=False)
    plan = import_gemma_scope_2(root, registry, include=["transcoder/*"], dry_run=True)
    assert {r.status for r in plan.results} == {"planned"} and len(plan.results) == 2
    assert registry.list() == []
    import_gemma_scope_2(root, registry, include=["transcoder/*"])
    folder = root / "transcoder/layer_9_width_16k_l0_small"
    from safetensors.torch import save_file

    t = load_file(str(folder / "params.safetensors"))
    t["b_dec"] = t["b_dec"] + 1
    save_file(t, str(folder / "params.safetensors"))
    again = _by_folder(import_gemma_scope_2(root, registry, include=["transcoder/*"]))
    assert again["transcoder/layer_9_width_16k_l0_small"].status == "published"
    assert again["transcoder/layer_9_width_16k_l0_small"].version == 2
    assert again["transcoder/layer_9_width_16k_l0_small_affine"].status == "unchanged"


def test_key_for_agrees_with_the_importer(tmp_path, registry, monkeypatch):
    """SAELens names resolve to the keys the importer gave, incl. both X vs X_all outcomes."""
    from scope_hub.interop import saelens

    monkeypatch.setattr(saelens, "installed_yaml", lambda: None)  # the vendored table: no 1.5 MB YAML parse
    report = import_gemma_scope_2(make_gs2_release(tmp_path, malformed=False), registry)
    got = {r.folder: r.key for r in report.results}
    assert (
        str(key_for("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_big"))
        == got["resid_post/layer_12_width_16k_l0_big"]
    )
    different = key_for("gemma-scope-2-270m-pt-res-all", "layer_12_width_16k_l0_big", registry=registry)
    assert str(different) == got["resid_post_all/layer_12_width_16k_l0_big"] and different.variant == "l0_big_all"
    identical = key_for("gemma-scope-2-270m-pt-res-all", "layer_12_width_16k_l0_small", registry=registry)
    assert str(identical) == got["resid_post_all/layer_12_width_16k_l0_small"]  # the alias: the X key
    assert key_for("gemma-scope-2-270m-pt-res-all", "layer_12_width_16k_l0_small").variant == "l0_small_all"


def _fake_hf_cache(tmp_path, root):
    """An HF cache holding the release at revision ``abc...`` (what snapshot_download leaves)."""
    repo = tmp_path / "hf-cache" / "models--google--gemma-scope-2-270m-pt"
    commit = "abc123" + "0" * 34
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(root, repo / "snapshots" / commit)
    return tmp_path / "hf-cache"


def test_hub_repo_offline_from_the_hf_cache(tmp_path, registry, monkeypatch):
    cache = _fake_hf_cache(tmp_path, make_gs2_release(tmp_path / "src", malformed=False))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    registry = Registry(registry.url, cache_dir=tmp_path / "cache", progress=False, offline=False)  # local: may push
    report = import_gemma_scope_2("google/gemma-scope-2-270m-pt", registry, include=["resid_post/*"])
    assert report.ok and report.counts() == {"published": 3}
    pulled = Dictionary.from_pretrained(
        registry.pull("google/gemma-3-270m:resid_post/layer_12/width_262k/sae/l0_medium_seed_1")
    )
    assert (
        pulled.config.provenance.source_uri
        == "hf://google/gemma-scope-2-270m-pt/resid_post/layer_12_width_262k_l0_medium_seed_1"
    )


def test_hub_repo_online_downloads_folder_by_folder(tmp_path, registry, monkeypatch):
    from tests.registry.fake_hub import FakeHub

    root = make_gs2_release(tmp_path / "src", malformed=False)
    hub = FakeHub().start()
    try:
        repo = hub.create_repo("google/gemma-scope-2-270m-pt")
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        repo.branches["main"] = hub.new_commit(repo, repo.branches["main"], files, "release").oid
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        report = import_gemma_scope_2("google/gemma-scope-2-270m-pt", registry, include=["mlp_out/*", "clt/*"])
        fetched = [path for method, path in hub.requests if "/resolve/" in path]
    finally:
        hub.stop()
    assert report.ok and report.counts() == {"published": 2}
    assert fetched and all("/mlp_out/" in p or "/clt/" in p for p in fetched), "only included folders download"


def test_a_folder_the_hub_cannot_provide_is_an_offline_error_saying_what_to_do(monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    from scope_hub.errors import OfflineError
    from scope_hub.interop.release import ReleaseSource

    def unreachable(self, patterns):
        raise LocalEntryNotFoundError("connection error and nothing cached")

    monkeypatch.setattr(ReleaseSource, "_hub_snapshot", unreachable)
    with pytest.raises(
        OfflineError, match="folder resid_post/x of hf://google/gemma-scope-2-270m-pt .*run again to resume"
    ):
        ReleaseSource("google/gemma-scope-2-270m-pt").fetch("resid_post/x")


def test_gemma_scope_1_release_and_its_failures(tmp_path, registry):
    marker = tmp_path / "marker"
    root = make_gs1_release(tmp_path, marker=marker)
    got = _by_folder(import_gemma_scope_1(root, registry))
    assert (
        got["layer_0/width_16k/average_l0_12"].key == "google/gemma-2-2b:resid_post/layer_0/width_16k/sae/average_l0_12"
    )
    assert got["layer_3/width_65k/average_l0_20"].status == "published"
    assert "allow_pickle=False" in got["layer_1/width_16k/average_l0_9"].reason and not marker.exists()
    assert "unexpected folder" in got["embedding/width_4k/average_l0_6"].reason
    assert "params.npz not found" in got["layer_2/width_16k/average_l0_7"].reason
    sae = Dictionary.from_pretrained(registry.pull("google/gemma-2-2b:resid_post/layer_0/width_16k/sae/average_l0_12"))
    with np.load(root / "layer_0/width_16k/average_l0_12/params.npz") as data:
        assert np.array_equal(sae.w_enc.numpy(), data["W_enc"]) and np.array_equal(
            sae.threshold.numpy(), data["threshold"]
        )
    assert sae.config.hook_point_in == "model.layers.0.output"


def test_gemma_scope_1_transcoders_need_a_known_repo(tmp_path, registry):
    root = make_gs1_release(tmp_path, name="gemma-scope-2b-pt-transcoders")
    report = import_gemma_scope_1(root, registry, include=["layer_0/*/*"])
    assert [r.key for r in report.results] == [
        "google/gemma-2-2b:mlp/layer_0/width_16k/transcoder/average_l0_12",
        "google/gemma-2-2b:mlp/layer_0/width_16k/transcoder/average_l0_50",
    ]
    tc = Dictionary.from_pretrained(registry.pull(report.results[0].key))
    assert (tc.config.type, tc.config.site, tc.config.site_out) == ("transcoder", "mlp_in", "mlp_out")
    shutil.move(root, tmp_path / "unnamed")
    with pytest.raises(ValueError, match="not a Gemma Scope repo name"):
        import_gemma_scope_1(tmp_path / "unnamed", registry)
    named = import_gemma_scope_1(tmp_path / "unnamed", registry, repo_id="google/gemma-scope-9b-it-att", dry_run=True)
    assert named.results[0].key == "google/gemma-2-9b-it:attn_out/layer_0/width_16k/sae/average_l0_12"


def test_registry_given_as_url(tmp_path, monkeypatch):
    url = (tmp_path / "by-url").as_uri()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline reading must not forbid pushing to a local registry
    report = import_gemma_scope_2(make_gs2_release(tmp_path, malformed=False), url, include=["attn_out/*"])
    assert report.ok and report.results[0].version == 1
    assert (
        json.loads((Registry(url, offline=False).pull(report.results[0].key) / "config.json").read_text())["site"]
        == "attn_out"
    )


def test_imported_versions_carry_a_card_stating_the_release_license(tmp_path, registry):
    from scope_hub.cards import parse_card

    root = make_gs2_release(tmp_path, malformed=False)
    report = import_gemma_scope_2(root, registry, include=["transcoder/*"])
    result = report.of("published")[0]
    front, body = parse_card(registry.card(result.key))
    assert front["license"] == "cc-by-4.0" and front["scope_hub"]["key"] == f"{result.key}@v1"
    assert result.folder in body  # where it came from: the release folder, no local path
    assert str(root) not in registry.card(result.key)
    again = import_gemma_scope_2(root, registry, include=["transcoder/*"], license="apache-2.0")
    assert {r.status for r in again.results} == {"published"}  # another license: new versions
    assert parse_card(registry.card(result.key))[0]["license"] == "apache-2.0"
