"""One settings module: scope-hub reads the environment only through :mod:`scope_hub.settings`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scope_hub.errors import ConfigError
from scope_hub.settings import ScopeHubSettings, environment_table, settings

ROOT = Path(__file__).resolve().parents[1]
READER = ROOT / "scope_hub" / "settings.py"
# torchrun's own variables describe the process group, not scope-hub's configuration.
TORCHRUN = ROOT / "trainers" / "distributed.py"


def _environment_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and getattr(node.value, "id", "") == "os"
        ):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_only_the_settings_module_reads_the_environment():
    found = []
    for top in ("scope_hub", "trainers"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path not in (READER, TORCHRUN):
                found += _environment_reads(path)
    assert found == [], "ask scope_hub.settings.settings() instead:\n" + "\n".join(found)


def test_values_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOPE_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://b")
    assert settings().cache == tmp_path and settings().s3_endpoint == "http://b"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://a")
    monkeypatch.setenv("HF_HUB_OFFLINE", "ON")
    monkeypatch.setenv("CI", "github")
    now = settings()
    assert (now.s3_endpoint, now.offline, now.progress) == ("http://a", True, False)


def test_a_malformed_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("SCOPE_HUB_INDEX_COMPACT_AFTER", "-3")
    with pytest.raises(ConfigError, match="SCOPE_HUB_INDEX_COMPACT_AFTER='-3'") as info:
        settings()
    assert info.value.variable == "SCOPE_HUB_INDEX_COMPACT_AFTER"


def test_the_docs_table_lists_every_variable():
    docs = (ROOT / "docs" / "architecture.md").read_text()
    assert environment_table() in docs, "regenerate the table in docs/architecture.md with environment_table()"
    assert len(environment_table().splitlines()) == len(ScopeHubSettings.model_fields) + 2
