"""The byte-store suite (fsspec style): file://, memory:// and s3:// honour the same contract."""

from __future__ import annotations

import threading

import pytest

from scope_hub.registry.backends import open_backend


@pytest.fixture
def store(store_harness):
    return open_backend(store_harness.url).store


def test_create_bytes_is_exclusive(store):
    assert store.create_bytes("m/_versions/v1.json", b"first")
    assert not store.create_bytes("m/_versions/v1.json", b"second")
    assert store.read_bytes("m/_versions/v1.json") == b"first"


def test_exactly_one_of_many_racing_creates_wins(store):
    wins, barrier = [], threading.Barrier(6)

    def attempt(i: int) -> None:
        barrier.wait()
        if store.create_bytes("race/v1.json", f"writer {i}".encode()):
            wins.append(i)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and store.read_bytes("race/v1.json") == f"writer {wins[0]}".encode()


def test_put_replaces_and_put_file_roundtrips(store, tmp_path):
    store.put_bytes("a/b.txt", b"old")
    store.put_bytes("a/b.txt", b"new")
    assert store.read_bytes("a/b.txt") == b"new"
    local = tmp_path / "blob.bin"
    local.write_bytes(bytes(range(256)) * 1000)
    seen = []
    store.put_file("blobs/x", local, seen.append)
    with store.open_read("blobs/x") as f:
        assert f.read() == local.read_bytes()
    assert sum(seen) == local.stat().st_size
    assert store.stat("blobs/x")[0] == 256_000 and store.stat("blobs/missing") is None


def test_listing_walking_reading_many_and_deleting(store):
    for path in ("k/_versions/v1.json", "k/_versions/v2.yanked", "k/sub/_versions/v1.json", "other/x"):
        store.put_bytes(path, path.encode())
    assert store.list_names("k/_versions") == ["v1.json", "v2.yanked"]
    assert store.list_names("k") == ["_versions", "sub"]
    assert store.list_names("nothing/here") == []
    assert store.walk("k") == ["k/_versions/v1.json", "k/_versions/v2.yanked", "k/sub/_versions/v1.json"]
    got = store.read_many(["other/x", "k/_versions/v1.json", "missing"])
    assert got == {"other/x": b"other/x", "k/_versions/v1.json": b"k/_versions/v1.json", "missing": None}
    store.delete("other/x")
    store.delete("other/x")  # absent: no error
    with pytest.raises(FileNotFoundError):
        store.read_bytes("other/x")


def test_every_call_is_counted(store):
    store.put_bytes("a", b"1")
    before = store.reads
    store.read_bytes("a")
    store.stat("a")
    store.list_names("")
    assert store.reads - before == 3 and store.stats["put"] >= 1
