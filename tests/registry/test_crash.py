"""A push SIGKILLed at any step leaves no half version visible, and the next push works."""

from __future__ import annotations

import os
import signal
import time

import pytest

from scope_hub.errors import VersionNotFoundError
from scope_hub.registry import Registry

from .helpers import KEY, cli_env, folder_bytes, make_dictionary, popen_cli, run_cli

FILE_POINTS = [
    "staged",
    "blob_tmp_written",
    "blob_uploaded",
    "before_manifest",
    "manifest_tmp_written",
    "manifest_written",
    "index_appended",
]
S3_POINTS = ["blob_uploaded", "before_manifest", "manifest_written"]
VISIBLE = {"manifest_written", "index_appended"}  # the manifest exists: v2 is complete and real


def _url(kind, tmp_path, request) -> str:
    if kind == "file":
        return (tmp_path / "registry").as_uri()
    return f"s3://{request.getfixturevalue('s3_bucket')}/registry"


def _check_recovery(url: str, tmp_path, v1, v2, point: str) -> None:
    expected = 2 if point in VISIBLE else 1
    fresh = Registry(url, cache_dir=tmp_path / "fresh-cache", progress=False)
    assert fresh.resolve(KEY).version == expected
    assert folder_bytes(fresh.pull(KEY)) == folder_bytes(v2 if expected == 2 else v1)
    if expected == 1:
        with pytest.raises(VersionNotFoundError):
            fresh.pull(f"{KEY}@v2")
    assert fresh.verify().ok  # no half-written manifest, no blob whose bytes do not match its name
    v3 = make_dictionary(tmp_path / "v3", seed=3)
    reg = Registry(url, progress=False)
    assert reg.push(v3, KEY).version == expected + 1
    [summary] = reg.list()  # the next push also logs the version a dead pusher could not
    assert (summary.latest, summary.versions) == (expected + 1, expected + 1)
    reg.gc(grace_seconds=0)  # orphaned blobs and temp files of the dead push go away ...
    if url.startswith("file://"):
        assert list((tmp_path / "registry" / "tmp").glob("*")) == []
    again = Registry(url, cache_dir=tmp_path / "after-gc", progress=False)
    for version, folder in [(1, v1), (expected + 1, v3)] + ([(2, v2)] if expected == 2 else []):
        assert folder_bytes(again.pull(f"{KEY}@v{version}")) == folder_bytes(folder)  # ... and nothing else
    assert again.verify().ok


@pytest.mark.parametrize("kind,point", [("file", p) for p in FILE_POINTS] + [("s3", p) for p in S3_POINTS])
def test_push_killed_at_a_fault_point(kind, point, tmp_path, request):
    url = _url(kind, tmp_path, request)
    v1, v2 = make_dictionary(tmp_path / "v1", seed=1), make_dictionary(tmp_path / "v2", seed=2)
    Registry(url, progress=False).push(v1, KEY)
    result = run_cli("--registry", url, "push", str(v2), KEY, env=cli_env(SCOPE_HUB_FAULT=point))
    assert result.returncode == -signal.SIGKILL, result.stderr
    _check_recovery(url, tmp_path, v1, v2, point)


def test_push_killed_from_outside_while_uploading(tmp_path):
    url = (tmp_path / "registry").as_uri()
    v1, v2 = make_dictionary(tmp_path / "v1", seed=1), make_dictionary(tmp_path / "v2", seed=2)
    Registry(url, progress=False).push(v1, KEY)
    ready = tmp_path / "paused"
    proc = popen_cli(
        "--registry",
        url,
        "push",
        str(v2),
        KEY,
        env=cli_env(SCOPE_HUB_FAULT="blob_uploaded:pause", SCOPE_HUB_FAULT_READY=str(ready)),
    )
    deadline = time.time() + 60
    while not ready.exists():
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _check_recovery(url, tmp_path, v1, v2, "blob_uploaded")
