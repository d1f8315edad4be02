"""hf:// specifics against the fake Hub: one commit per push, a browsable layout, the HF cache offline."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from scope_hub.cli import main
from scope_hub.errors import OfflineError, RegistryError
from scope_hub.keys import parse_key
from scope_hub.registry import Registry
from scope_hub.registry.backends.hf import tag_name
from scope_hub.registry.backends.hf_client import parse_hf_url

from .helpers import KEY, cli_env, folder_bytes, make_dictionary, run_cli

FOLDER = parse_key(KEY).path


def _head(hub, repo_id):
    repo = hub.repos[repo_id]
    return repo.commits[repo.branches["main"]]


def test_each_push_is_one_commit_with_a_browsable_folder_and_a_tag(tmp_path, hf_repo, fake_hub):
    reg = Registry(f"hf://{hf_repo}", progress=False)
    reg.push(make_dictionary(tmp_path / "v1", seed=1, card="# v1 card"), KEY)
    first = _head(fake_hub, hf_repo)
    assert first.title == f"scope-hub: publish {KEY}@v1"
    assert {
        f"{FOLDER}/config.json",
        f"{FOLDER}/params.safetensors",
        f"{FOLDER}/README.md",
        f"{FOLDER}/.scope/v1.json",
        ".scope/index.json",
    } <= set(first.files)
    reg.push(make_dictionary(tmp_path / "v2", seed=2), KEY)  # no card text this time
    second = _head(fake_hub, hf_repo)
    assert second.parent == first.oid  # exactly one new commit
    card = second.files[f"{FOLDER}/README.md"].decode()  # the folder shows v2 only, its own card
    assert f"{KEY}@v2" in card and "# v1 card" not in card
    assert json.loads(second.files[".scope/index.json"])["keys"][KEY][0]["revision"] == first.oid
    assert fake_hub.repos[hf_repo].tags[tag_name(parse_key(KEY), 1)] == first.oid
    assert "# v1 card" in Registry(f"hf://{hf_repo}", progress=False).info(f"{KEY}@v1").card  # read at its commit


def test_offline_with_a_prepopulated_hf_cache_and_no_hub(tmp_path, hf_repo, fake_hub, monkeypatch):
    url = f"hf://{hf_repo}"
    v1, v2 = make_dictionary(tmp_path / "v1", seed=1), make_dictionary(tmp_path / "v2", seed=2)
    Registry(url, progress=False).push(v1, KEY)
    Registry(url, progress=False).push(v2, KEY)
    warm = Registry(url, cache_dir=tmp_path / "first-session", progress=False)
    warm.pull(f"{KEY}@v1")
    warm.pull(KEY)  # fills the standard HF cache (blobs/snapshots/refs)
    shutil.rmtree(tmp_path / "first-session")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: any request would fail
    offline = Registry(url, cache_dir=tmp_path / "second-session", progress=False)
    assert folder_bytes(offline.pull(f"{KEY}@v1")) == folder_bytes(v1)
    assert folder_bytes(offline.pull(KEY)) == folder_bytes(v2)
    assert [s.latest for s in offline.list()] == [2]
    with pytest.raises(OfflineError):
        offline.pull(KEY.replace("layer_6", "layer_7"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    with pytest.raises(OfflineError):
        Registry(url, cache_dir=tmp_path / "third-session", progress=False).pull(f"{KEY}@v1")


def test_reindex_rebuilds_a_lost_index_from_manifests_and_history(tmp_path, hf_repo, fake_hub, monkeypatch):
    url = f"hf://{hf_repo}"
    folders = [make_dictionary(tmp_path / f"v{i}", seed=i) for i in range(3)]
    for folder in folders:
        Registry(url, progress=False).push(folder, KEY)
    repo = fake_hub.repos[hf_repo]
    with fake_hub.lock:  # someone deletes the index in a plain commit
        files = dict(_head(fake_hub, hf_repo).files)
        del files[".scope/index.json"]
        repo.branches["main"] = fake_hub.new_commit(repo, repo.branches["main"], files, "oops").oid
    assert Registry(url, progress=False).list() == []
    assert Registry(url, progress=False).reindex() == 3
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "fresh-hf-cache"))
    fresh = Registry(url, cache_dir=tmp_path / "fresh", progress=False)
    assert [s.latest for s in fresh.list()] == [3]
    for version, folder in enumerate(folders, start=1):
        assert folder_bytes(fresh.pull(f"{KEY}@v{version}")) == folder_bytes(folder)


def test_tokens_are_never_printed_or_written(tmp_path, hf_repo, fake_hub):
    token = f"hf_{uuid.uuid4().hex}"
    env = cli_env(HF_TOKEN=token, HF_ENDPOINT=fake_hub.url)
    url = f"hf://{hf_repo}"
    outputs = [
        run_cli("--registry", url, "push", str(make_dictionary(tmp_path / "v1", seed=1)), KEY, env=env),
        run_cli("--registry", url, "pull", KEY, env=env),
        run_cli("--registry", url, "card", KEY, env=env),
        run_cli(
            "--registry",
            url,
            "release",
            "rel",
            KEY,
            "--license",
            "mit",
            "--publish",
            "--out",
            str(tmp_path / "rel.md"),
            env=env,
        ),
        run_cli("--registry", url, "pull", f"{KEY}@v7", env=env),
        run_cli("--registry", "hf://org/does-not-exist", "ls", env=env),
    ]
    assert [r.returncode for r in outputs] == [0, 0, 0, 0, 1, 1]
    assert all(token not in r.stdout + r.stderr for r in outputs)
    assert "license: apache-2.0" in outputs[2].stdout  # the card was read (and is checked below, as stored)
    with fake_hub.lock:  # nothing on the Hub either: cards, manifests, index, release cards
        assert all(
            token.encode() not in data for c in fake_hub.repos[hf_repo].commits.values() for data in c.files.values()
        )
    assert token not in (tmp_path / "rel.md").read_text()
    for root in (tmp_path / "scope-cache", tmp_path / "hf-cache"):
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    assert token.encode() not in Path(path).read_bytes(), path


def test_dataset_repos_and_bad_urls():
    assert parse_hf_url("hf://datasets/org/dicts") == ("dataset", "org/dicts", "main")
    assert parse_hf_url("hf://org/dicts@dev") == ("model", "org/dicts", "dev")
    with pytest.raises(RegistryError):
        parse_hf_url("hf://just-a-name")


def test_dataset_repo_round_trip(tmp_path, hf_repo, fake_hub):
    url = f"hf://datasets/{hf_repo}"
    src = make_dictionary(tmp_path / "v1", seed=1)
    Registry(url, progress=False).push(src, KEY)
    assert folder_bytes(Registry(url, cache_dir=tmp_path / "c", progress=False).pull(KEY)) == folder_bytes(src)


def test_pull_at_a_tag_a_commit_or_a_branch_then_offline(tmp_path, hf_repo, fake_hub, monkeypatch, capsys):
    url = f"hf://{hf_repo}"
    v1, v2 = make_dictionary(tmp_path / "v1", seed=1), make_dictionary(tmp_path / "v2", seed=2)
    Registry(url, progress=False).push(v1, KEY)
    Registry(url, progress=False).push(v2, KEY)
    repo = fake_hub.repos[hf_repo]
    tag = tag_name(parse_key(KEY), 1)
    sha = repo.tags[tag]
    assert repo.commits[sha].title == f"scope-hub: publish {KEY}@v1"  # the tag marks the version's commit
    for revision in (tag, sha):  # the registry as it was: v1 is its latest, read at that commit
        at = Registry(f"{url}@{revision}", cache_dir=tmp_path / f"c-{revision[:8]}", progress=False)
        assert at.resolve(KEY).version == 1 and folder_bytes(at.pull(KEY)) == folder_bytes(v1)
        assert f"{KEY}@v1" in at.card(KEY)
    assert main(["--registry", url, "pull", KEY, "--revision", tag]) == 0
    assert folder_bytes(capsys.readouterr().out.strip()) == folder_bytes(v1)
    assert main(["--registry", url, "pull", KEY, "--revision", "main"]) == 0
    assert folder_bytes(capsys.readouterr().out.strip()) == folder_bytes(v2)
    assert main(["--registry", (tmp_path / "reg").as_uri(), "pull", KEY, "--revision", tag]) == 1
    assert "--revision applies to hf://" in capsys.readouterr().err
    # the standard HF cache now holds the tag's files: offline, with the Hub unreachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for revision in (tag, sha):
        offline = Registry(f"{url}@{revision}", cache_dir=tmp_path / f"off-{revision[:8]}", progress=False)
        assert folder_bytes(offline.pull(KEY)) == folder_bytes(v1)


def test_a_commit_pinned_url_is_read_only(tmp_path, hf_repo, fake_hub):
    url = f"hf://{hf_repo}"
    Registry(url, progress=False).push(make_dictionary(tmp_path / "v1", seed=1), KEY)
    sha = fake_hub.repos[hf_repo].branches["main"]
    with pytest.raises(RegistryError, match="pinned to a commit"):
        Registry(f"{url}@{sha}", progress=False).push(make_dictionary(tmp_path / "v2", seed=2), KEY)


def test_private_repos_are_created_private(tmp_path, hf_repo, fake_hub):
    assert (
        main(["--registry", f"hf://{hf_repo}", "push", str(make_dictionary(tmp_path / "v1", seed=1)), KEY, "--private"])
        == 0
    )
    assert fake_hub.repos[hf_repo].private is True
    other = f"{hf_repo}-public"
    Registry(f"hf://{other}", progress=False).push(make_dictionary(tmp_path / "v2", seed=2), KEY)
    assert fake_hub.repos[other].private is None  # huggingface_hub's default: the account decides
    with pytest.raises(RegistryError, match="hf://"):
        Registry((tmp_path / "reg").as_uri(), progress=False).push(tmp_path / "v1", KEY, private=True)


def test_an_lfs_sized_push_round_trips_byte_exact_and_re_pushing_it_changes_nothing(
    tmp_path, hf_repo, fake_hub, monkeypatch
):
    from huggingface_hub import constants

    from scope_hub.registry.backends.hf_folders import fetch_hub_folder

    from .fake_hub import LFS_THRESHOLD

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # see fake_hub.py: the fake speaks LFS, not Xet
    big = make_dictionary(tmp_path / "big", seed=3, d_in=128, d_sae=12_000)  # params.safetensors ~12 MB
    assert (big / "params.safetensors").stat().st_size > LFS_THRESHOLD
    url = f"hf://{hf_repo}"
    fake_hub.requests.clear()
    assert main(["--registry", url, "push", str(big), KEY.replace("width_8", "width_12000")]) == 0
    assert any(p.endswith("/info/lfs/objects/batch") for _, p in fake_hub.requests)
    assert [m for m, p in fake_hub.requests if p.startswith("/lfs-upload/")] == ["PUT"]  # the object, once
    head = _head(fake_hub, hf_repo)
    folder = parse_key(KEY.replace("width_8", "width_12000")).path
    assert f"{folder}/params.safetensors" in head.lfs and f"{folder}/config.json" not in head.lfs
    pulled = Registry(url, cache_dir=tmp_path / "c", progress=False).pull(KEY.replace("width_8", "width_12000"))
    assert folder_bytes(pulled) == folder_bytes(big)
    local, _ = fetch_hub_folder(f"{url}/{folder}")  # the browsable folder, read as a plain Hub folder
    assert (local / "params.safetensors").read_bytes() == (big / "params.safetensors").read_bytes()
    commits = len(fake_hub.repos[hf_repo].commits)
    result = Registry(url, progress=False).push(pulled, KEY.replace("width_8", "width_12000"))  # a pulled copy
    assert (result.created, result.version) == (False, 1)
    assert len(fake_hub.repos[hf_repo].commits) == commits  # no new commit, no new version


def test_the_card_records_every_file_hash_and_verify_catches_one_flipped_byte(tmp_path, hf_repo, fake_hub, capsys):
    import hashlib

    from scope_hub import load_dictionary
    from scope_hub.cards import parse_card
    from scope_hub.errors import IntegrityError

    url = f"hf://{hf_repo}"
    src = make_dictionary(tmp_path / "v1", seed=1)
    Registry(url, progress=False).push(src, KEY)
    pulled = Registry(url, cache_dir=tmp_path / "c", progress=False).pull(KEY)
    recorded = parse_card((pulled / "README.md").read_text())[0]["scope_hub"]["files"]
    assert recorded == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir() if p.suffix != ".md"}
    copy = shutil.copytree(pulled, tmp_path / "copy")
    assert main(["verify", str(copy)]) == 0
    data = bytearray((copy / "params.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "params.safetensors").write_bytes(bytes(data))
    assert main(["verify", str(copy)]) == 1
    assert "params.safetensors: sha256" in capsys.readouterr().out
    # someone edits the browsable folder on the Hub: the card no longer vouches for the bytes
    fake_hub.commit_files(hf_repo, {f"{FOLDER}/params.safetensors": bytes(data)}, "edit weights by hand")
    with pytest.raises(IntegrityError, match="card records"):
        load_dictionary(f"{url}/{FOLDER}")
    assert not Registry(url, progress=False).verify().ok
