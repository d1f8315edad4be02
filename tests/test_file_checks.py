"""Check results remembered by file identity: reused while a file is unchanged, never past a change."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from scope_hub.config_io import read_config
from scope_hub.dictionaries import SAE, Dictionary
from scope_hub.errors import ConfigError, ShapeMismatchError
from scope_hub.file_checks import CHECKS, CheckCache, file_identity
from scope_hub.metadata import DictionaryConfig


@pytest.fixture
def folder(tmp_path):
    sae = SAE(DictionaryConfig(type="sae", architecture="jumprelu", d_in=4, d_sae=8))
    return sae.save_pretrained(tmp_path / "sae")


def test_unchanged_files_are_checked_once(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    cache, calls = CheckCache(), []
    for _ in range(3):
        assert cache.get_or_run([path], "what", lambda: calls.append(1) or "ok") == "ok"
    assert len(calls) == 1
    cache.get_or_run([path], "another check", lambda: calls.append(1))
    assert len(calls) == 2


@pytest.mark.parametrize("change", ["rewrite same size", "atomic replace", "touch"])
def test_any_change_to_a_file_changes_its_identity(tmp_path, change: str) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    before = file_identity(path)
    if change == "rewrite same size":
        path.write_text("xyz")
    elif change == "atomic replace":
        (tmp_path / "g").write_text("abc")
        os.replace(tmp_path / "g", path)
    else:
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert file_identity(path) != before


def test_failing_checks_are_not_remembered(tmp_path) -> None:
    path = tmp_path / "f"
    path.write_text("abc")
    cache = CheckCache()

    def fail():
        raise ValueError("bad")

    for _ in range(2):
        with pytest.raises(ValueError):
            cache.get_or_run([path], "check", fail)
    assert cache.get_or_run([path], "check", lambda: 1) == 1


def test_cache_is_bounded(tmp_path) -> None:
    cache = CheckCache(max_entries=2)
    path = tmp_path / "f"
    path.write_text("a")
    for i in range(5):
        cache.get_or_run([path], i, lambda i=i: i)
    assert len(cache._entries) == 2


def test_a_weights_file_replaced_after_a_load_is_checked_again(folder) -> None:
    Dictionary.from_pretrained(folder, lazy=True)  # remembered: config, header, tensor check
    save_file({"w_enc": torch.zeros(4, 9)}, str(folder / "params.safetensors"))  # same folder, broken file
    with pytest.raises(ShapeMismatchError, match="w_enc"):
        Dictionary.from_pretrained(folder, lazy=True)
    with pytest.raises(ShapeMismatchError):  # and again: the failure was not remembered
        Dictionary.from_pretrained(folder, lazy=True)


def test_a_config_edited_after_a_load_is_parsed_again(folder) -> None:
    assert read_config(folder).d_sae == 8
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "d_sae": 16}))
    assert read_config(folder).d_sae == 16
    (folder / "config.json").write_text(json.dumps({**raw, "d_sae": -1}))
    with pytest.raises(ConfigError, match="d_sae"):
        read_config(folder)


def test_each_caller_gets_its_own_config(folder) -> None:
    first = read_config(folder)
    first.d_sae = 1234
    assert read_config(folder).d_sae == 8
    assert CHECKS.max_entries > 0
