"""An S3 download cut half-way is a typed registry error, and leaves nothing half-written in the cache.

A moto server of its own (the session's one serves other tests) is stopped while a pull is
paused at the ``first_chunk_downloaded`` fault point, after the first 8 MB of a ~25 MB blob
have landed; s3fs reads ahead one more block, so the pull fails in a later ranged GET.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

import pytest

from scope_hub.errors import RegistryConnectionError
from scope_hub.registry import Registry, faults

from .helpers import make_dictionary

D_SAE = 48_000  # w_enc and w_dec of 64 x 48,000 fp32: ~25 MB, three 8 MB blocks and more
KEY = f"google/gemma-3-270m:resid_post/layer_6/width_{D_SAE}/sae"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_s3_download_cut_half_way_is_a_registry_connection_error(tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",  # fail in seconds, not after botocore's retries
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    import boto3

    bucket = f"cut-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/registry"
    Registry(url, cache_dir=tmp_path / "pusher", progress=False).push(
        make_dictionary(tmp_path / "d", d_in=64, d_sae=D_SAE, key=KEY), KEY
    )

    ready, go = tmp_path / "ready", tmp_path / "go"
    monkeypatch.setenv("SCOPE_HUB_FAULT", "first_chunk_downloaded:wait")
    monkeypatch.setenv("SCOPE_HUB_FAULT_READY", str(ready))
    monkeypatch.setenv("SCOPE_HUB_FAULT_GO", str(go))
    monkeypatch.setattr(faults, "_waited", set())  # the point pauses once per process

    def cut_the_connection() -> None:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("ready.*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.stop()
        go.touch()

    cutter = threading.Thread(target=cut_the_connection, daemon=True)
    cutter.start()
    cache = tmp_path / "puller"
    try:
        with pytest.raises(RegistryConnectionError, match=f"cannot reach the S3 endpoint {endpoint}") as caught:
            Registry(url, cache_dir=cache, progress=False).pull(KEY)
    finally:
        go.touch()
        cutter.join(timeout=60)
        server.stop()
    assert list(tmp_path.glob("ready.*")), "the pull never reached the fault point: nothing was cut"
    assert isinstance(caught.value, ConnectionError) and caught.value.__cause__ is None
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size >= 8 * 1024 * 1024], (
        "a partial blob was left in the cache"
    )
