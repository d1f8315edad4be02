"""Fixtures: isolated caches, a moto S3 server, a fake Hugging Face Hub, and one harness per backend.

Every registry test runs with its own SCOPE_HUB_CACHE / HF_HUB_CACHE under tmp_path, with
offline flags cleared and progress bars off (CI=1), so tests never touch the user's files.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scope_hub.keys import parse_key
from scope_hub.registry import Registry
from scope_hub.registry.layout import blob_path, manifest_path

from .fake_hub import FakeHub

BACKENDS = ["file", "memory", "s3", "hf"]
STORE_BACKENDS = ["file", "memory", "s3"]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Per-test caches; no offline flags, tokens or user registries leak in."""
    for name in (
        "SCOPE_HUB_OFFLINE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "SCOPE_HUB_FAULT",
        "HF_TOKEN",
        "SCOPE_HUB_INDEX_COMPACT_AFTER",
        "SCOPE_HUB_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCOPE_HUB_CACHE", str(tmp_path / "scope-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("SCOPE_HUB_REGISTRY", (tmp_path / "default-registry").as_uri())
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("CI", "1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _atomic_conditional_puts() -> None:
    """Make moto's ``If-None-Match: *`` PUT atomic, as S3's is.

    moto's threaded server looks the key up and then writes it, so two racing exclusive creates can
    both succeed there (two pushers given the same version), which real S3 never allows. The
    registry's concurrency tests exercise the protocol, not that emulator gap.
    """
    import threading

    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "atomic_conditional", False):
        return
    original, lock = S3Response.put_object, threading.Lock()

    def put_object(self: S3Response) -> object:
        if self.headers.get("If-None-Match") != "*":
            return original(self)
        with lock:
            return original(self)

    put_object.atomic_conditional = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign,assignment]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real moto S3 server on 127.0.0.1 (shared by the session; each test uses its own bucket)."""
    from moto.server import ThreadedMotoServer

    _atomic_conditional_puts()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_endpoint, monkeypatch) -> str:
    """A fresh bucket; AWS_* variables point boto/s3fs (and child processes) at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    import boto3

    bucket = f"reg-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="session")
def fake_hub():
    """The in-process fake Hub (see fake_hub.py)."""
    hub = FakeHub().start()
    yield hub
    hub.stop()


@pytest.fixture
def hf_repo(fake_hub, monkeypatch) -> str:
    """A fresh repo id on the fake Hub; HF_ENDPOINT points at it."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    return f"org/reg-{uuid.uuid4().hex[:10]}"


@dataclass
class Harness:
    """One backend under test, plus the hooks the suite needs to damage or reset it."""

    kind: str
    url: str
    tmp: Path
    corrupt_file: Callable[[str, int, str], None]
    reset: Callable[[], None]
    requests: Callable[[Registry], int]
    caches: list[Path] = field(default_factory=list)

    def registry(self, fresh_cache: bool = False, **kwargs) -> Registry:
        """A Registry on this backend; ``fresh_cache`` gives it an empty cache of its own."""
        cache = self.tmp / f"cache-{uuid.uuid4().hex[:6]}" if fresh_cache else Path(os.environ["SCOPE_HUB_CACHE"])
        return Registry(self.url, cache_dir=cache, progress=False, **kwargs)


def _flip(data: bytes) -> bytes:
    """Same size, different bytes (so only a hash check can notice)."""
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _entry_sha(harness_url: str, key: str, version: int, filename: str) -> str:
    manifest = Registry(harness_url, progress=False).resolve(f"{key}@v{version}")
    return next(e.sha256 for e in manifest.files if e.path == filename)


def _store_harness(kind: str, url: str, tmp: Path) -> Harness:
    from scope_hub.registry.backends import open_backend

    def store():
        return open_backend(url).store

    def corrupt_file(key: str, version: int, filename: str) -> None:
        path = blob_path(_entry_sha(url, key, version, filename))
        s = store()
        if kind == "file":
            target = s.base / path
            target.chmod(0o644)
            target.write_bytes(_flip(target.read_bytes()))
        else:
            s.put_bytes(path, _flip(s.read_bytes(path)))

    def reset() -> None:
        s = store()
        if kind == "file":
            shutil.rmtree(s.base, ignore_errors=True)
        elif kind == "memory":
            s.wipe()
        else:
            for path in s.walk(""):
                s.delete(path)

    return Harness(kind, url, tmp, corrupt_file, reset, lambda reg: reg.backend.requests())


def _hf_harness(url: str, hub: FakeHub, repo_id: str, tmp: Path) -> Harness:
    def corrupt_file(key: str, version: int, filename: str) -> None:
        folder = parse_key(key).path
        repo = hub.repos[repo_id]
        with hub.lock:
            for commit in repo.commits.values():
                path = f"{folder}/{filename}"
                if path in commit.files:
                    commit.files[path] = _flip(commit.files[path])

    def reset() -> None:
        with hub.lock:
            hub.repos.pop(repo_id, None)

    return Harness("hf", url, tmp, corrupt_file, reset, lambda reg: len(hub.requests))  # real HTTP requests


@pytest.fixture(params=BACKENDS)
def harness(request, tmp_path) -> Harness:
    """Every backend in turn: the reusable registry suite runs once per backend."""
    return _make_harness(request.param, request, tmp_path)


@pytest.fixture(params=STORE_BACKENDS)
def store_harness(request, tmp_path) -> Harness:
    """Byte-store backends only (file, memory, s3)."""
    return _make_harness(request.param, request, tmp_path)


def _make_harness(kind: str, request, tmp_path: Path) -> Harness:
    if kind == "file":
        return _store_harness(kind, (tmp_path / "registry").as_uri(), tmp_path)
    if kind == "memory":
        url = f"memory://reg-{uuid.uuid4().hex[:10]}"
        return _store_harness(kind, url, tmp_path)
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return _store_harness(kind, f"s3://{bucket}/registry", tmp_path)
    repo_id = request.getfixturevalue("hf_repo")
    return _hf_harness(f"hf://{repo_id}", request.getfixturevalue("fake_hub"), repo_id, tmp_path)


def manifest_store_path(key: str, version: int) -> str:
    """Store path of a manifest (for tests that damage stores directly)."""
    return manifest_path(parse_key(key), version)
