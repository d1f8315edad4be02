"""Shared helpers for registry tests: tiny dictionary folders and CLI subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from scope_hub.keys import parse_key
from scope_hub.metadata import DictionaryConfig

KEY = "google/gemma-3-270m:resid_post/layer_6/width_8/sae"
"""A key matching make_dictionary's default folder (d_sae 8): a push is refused unless key and config agree."""
REPO_ROOT = Path(__file__).resolve().parents[2]
LICENSE = "apache-2.0"
CARD = "README.md"


def make_dictionary(
    folder: Path,
    seed: int = 0,
    d_in: int = 4,
    d_sae: int = 8,
    card: str | None = None,
    type_: str = "sae",
    license: str | None = LICENSE,
    key: str = KEY,
) -> Path:
    """A valid native folder: config.json (DictionaryConfig dump) + params.safetensors + README.md.

    config.json names the model, site and layer of ``key`` (a single-layer key; site ``mlp``:
    mlp_in -> mlp_out); its width is ``d_sae`` and its type ``type_``, whatever the key says.
    The README.md is a card source: front matter with ``license`` (if given) and the ``card``
    text; no README.md at all when both are None.
    """
    folder.mkdir(parents=True, exist_ok=True)
    k = parse_key(key)
    site, site_out = ("mlp_in", "mlp_out") if k.site == "mlp" else (k.site, None)
    config = DictionaryConfig(
        type=type_,
        architecture="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        model=k.model,
        site=site,
        site_out=site_out if type_ != "sae" else None,
        layer=k.layer,
    )
    (folder / "config.json").write_text(config.model_dump_json(indent=1))
    rng = np.random.default_rng(seed)
    save_file(
        {
            "w_enc": rng.standard_normal((d_in, d_sae)).astype(np.float32),
            "b_enc": rng.standard_normal(d_sae).astype(np.float32),
            "threshold": np.full(d_sae, 0.1, np.float32),
            "w_dec": rng.standard_normal((d_sae, d_in)).astype(np.float32),
            "b_dec": np.zeros(d_in, np.float32),
        },
        str(folder / "params.safetensors"),
    )
    if card is not None or license is not None:
        front = f"---\nlicense: {license}\n---\n" if license else ""
        (folder / CARD).write_text(front + (card or ""))
    return folder


def folder_bytes(folder: Path, card: bool = False) -> dict[str, bytes]:
    """Name -> bytes of every file in a folder; the README.md only if ``card`` (a pushed folder holds
    the card source, a pulled one the card rendered for its version)."""
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file() and (card or p.name != CARD)}


def cli_env(**extra: str) -> dict[str, str]:
    """The current environment (fixtures already point caches at tmp dirs) plus ``extra``."""
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``python -m scope_hub.cli ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "scope_hub.cli", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        timeout=timeout,
    )


def popen_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m scope_hub.cli ARGS`` without waiting."""
    return subprocess.Popen(
        [sys.executable, "-m", "scope_hub.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
    )


def dump(obj) -> str:
    return json.dumps(obj, sort_keys=True)


def race_pushes(url: str, jobs: list[tuple[Path, str]], point: str, tmp_path: Path, *extra: str) -> list[str]:
    """Start one `scope-hub push FOLDER KEY *extra` per job, hold them all at fault point ``point``,
    release them together; returns their stdouts (each must exit 0)."""
    ready, go = tmp_path / "ready", tmp_path / "go"
    env = cli_env(
        SCOPE_HUB_FAULT=f"{point}:wait",
        SCOPE_HUB_FAULT_READY=str(ready),
        SCOPE_HUB_FAULT_GO=str(go),
        SCOPE_HUB_INDEX_COMPACT_AFTER="2",
    )  # compactions race too
    procs = [popen_cli("--registry", url, "push", str(folder), key, *extra, env=env) for folder, key in jobs]
    deadline = time.time() + 90
    while len(list(tmp_path.glob("ready.*"))) < len(jobs):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    go.touch()
    outputs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0] * len(jobs), outputs
    return [out for out, _ in outputs]
