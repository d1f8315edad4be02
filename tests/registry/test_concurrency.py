"""Real processes racing: concurrent pushers on file:// and s3:// (moto), threads on hf://."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from scope_hub.registry import Registry

from .helpers import KEY, folder_bytes, make_dictionary
from .helpers import race_pushes as _race

N = 6
N_S3 = 4  # each s3 pusher imports s3fs/botocore (~1.5 CPU-s): keep the 2-core run short


def _url(kind: str, tmp_path: Path, request) -> str:
    if kind == "file":
        return (tmp_path / "registry").as_uri()
    return f"s3://{request.getfixturevalue('s3_bucket')}/registry"


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_concurrent_pushers_to_one_key_get_distinct_versions_and_lose_nothing(kind, tmp_path, request):
    url = _url(kind, tmp_path, request)
    n = N if kind == "file" else N_S3
    folders = [make_dictionary(tmp_path / f"d{i}", seed=i) for i in range(n)]
    outputs = _race(url, [(f, KEY) for f in folders], "before_manifest", tmp_path)
    versions = [int(re.search(r"@v(\d+) ", out).group(1)) for out in outputs]
    assert sorted(versions) == list(range(1, n + 1))
    reg = Registry(url, progress=False)
    for folder, version in zip(folders, versions):
        assert folder_bytes(reg.pull(f"{KEY}@v{version}")) == folder_bytes(folder)
    [summary] = reg.list()
    assert (summary.latest, summary.versions) == (n, n)
    assert reg.verify().ok


def test_concurrent_index_appends_and_compactions_keep_every_key(tmp_path, request):
    # file:// only: the index uses nothing but create_bytes/put_bytes, whose s3 race behaviour
    # test_stores.py and the s3 pusher race above already cover.
    url = _url("file", tmp_path, request)
    keys = [f"{KEY}/l0_{i}" for i in range(N)]
    jobs = [(make_dictionary(tmp_path / f"d{i}", seed=i), key) for i, key in enumerate(keys)]
    _race(url, jobs, "manifest_written", tmp_path)
    reg = Registry(url, progress=False)
    assert [s.key for s in reg.list()] == sorted(keys)
    store = reg.backend.store
    assert len(store.list_names("index/log")) <= N  # compactions ran and removed merged segments
    assert reg.reindex() == N and [s.key for s in reg.list()] == sorted(keys)


def test_concurrent_hf_pushers_rebase_on_conflicts(tmp_path, hf_repo, fake_hub):
    url = f"hf://{hf_repo}"
    folders = [make_dictionary(tmp_path / f"d{i}", seed=i) for i in range(4)]
    Registry(url, progress=False).push(folders[0], KEY)  # create the repo first
    results, errors, barrier = [], [], threading.Barrier(3)

    def push(folder: Path) -> None:
        try:
            barrier.wait()
            results.append((folder, Registry(url, progress=False).push(folder, KEY).version))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(f,)) for f in folders[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(v for _, v in results) == [2, 3, 4]
    reg = Registry(url, progress=False)
    for folder, version in results:
        assert folder_bytes(reg.pull(f"{KEY}@v{version}")) == folder_bytes(folder)
    commits = [c.title for c in fake_hub.repos[hf_repo].commits.values()]
    assert sum(title.startswith("scope-hub: publish") for title in commits) == 4  # one commit per version
