"""Registry URLs: malformed ones are typed one-line errors (exit 2), and no credential is ever echoed or stored."""

from __future__ import annotations

import json
import os

import pytest

from scope_hub.cli import main
from scope_hub.errors import RegistryConnectionError, RegistryURLError
from scope_hub.keys import parse_key
from scope_hub.redaction import redact_text, redact_url
from scope_hub.registry import Registry
from scope_hub.registry.cache import LocalCache
from scope_hub.registry.lockfile import LockEntry, Lockfile

from .helpers import KEY, make_dictionary

SECRET = "SeCrEt42"
SECRET_URLS = [
    f"hf://user:{SECRET}@org/dicts",
    f"hf://org/dicts?token={SECRET}",
    f"s3://AKIA:{SECRET}@bucket/reg",
    f"s3://bucket/reg?X-Amz-Signature={SECRET}",
    f"file://user:{SECRET}@/tmp/reg",
    f"memory://user:{SECRET}@box",
    f"memory://box?token={SECRET}",
]


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file://", "no absolute path"),
        ("file:///tmp/a\x00b", "control characters"),
        ("/tmp/" + "a" * 300 + "/reg", "too long"),
        ("x" * 5000, "too long"),
        ("file:relative/reg", "needs an absolute path"),
        ("s3://a b/x", "not a valid bucket name"),
        ("s3:///x", "has no bucket"),
        ("s3://", "has no bucket"),
        ("ftp://host/reg", "unsupported registry URL"),
    ],
)
def test_bad_registry_urls_are_one_line_usage_errors(url, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegistryURLError, match=needle):
        Registry(url)
    assert main(["--registry", url, "ls"]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "internal error" not in err
    assert os.listdir(tmp_path) == []  # nothing was created on the way


def test_one_slash_file_uri_is_the_file_uri_it_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")
    target = tmp_path / "reg"
    reg = Registry(f"file:{target}")
    assert reg.url == target.as_uri()
    assert reg.push(make_dictionary(tmp_path / "d"), KEY).version == 1
    assert (target / "manifests").is_dir() and not (tmp_path / ".." / "file:").exists()


def test_unreachable_s3_endpoint_names_the_endpoint_and_the_variable(monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(RegistryConnectionError, match="AWS_ENDPOINT_URL") as caught:
        Registry("s3://bucket/reg").list()
    assert endpoint in str(caught.value) and isinstance(caught.value, ConnectionError)
    assert main(["--registry", "s3://bucket/reg", "ls"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_secret_in_a_registry_url_is_never_echoed(url, tmp_path, capsys):
    with pytest.raises(RegistryURLError) as caught:
        Registry(url, cache_dir=tmp_path / "cache")
    assert SECRET not in str(caught.value) and "***" in str(caught.value)
    assert main(["--registry", url, "ls"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("url", SECRET_URLS)
def test_lockfiles_and_cache_records_keep_a_url_without_the_secret(url, tmp_path):
    public = redact_url(url)
    assert SECRET not in public and public.split("://")[0] == url.split("://")[0]
    entry = LockEntry(registry=url, key=KEY, version=1, manifest_sha256="0" * 64, content_sha256="0" * 64)
    Lockfile(entries=[entry]).save(tmp_path / "scope.lock")
    text = (tmp_path / "scope.lock").read_text()
    assert SECRET not in text and json.loads(text)["entries"][0]["registry"] == public
    cache = LocalCache(tmp_path / "cache", url)
    cache.save_manifest(parse_key(KEY), 1, b"{}")
    assert (cache.base / "url").read_text() == public
    assert not any(SECRET in p.name for p in (tmp_path / "cache").rglob("*"))


def test_redact_text_masks_every_url_in_a_message():
    text = f"cannot open 's3://k:{SECRET}@b/x?sig={SECRET}' or hf://org/x@dev?token={SECRET} (file:///srv/reg ok)"
    masked = redact_text(text)
    assert SECRET not in masked
    assert "s3://***@b/x?***" in masked and "hf://org/x@dev?***" in masked and "file:///srv/reg" in masked
