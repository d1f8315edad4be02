"""Checkpoints as safetensors + JSON (never pickle), written atomically.

A checkpoint is a folder ``{checkpoint_dir}/step_{N:09d}/`` (N = steps done) with

* ``tensors.safetensors``: ``param/<name>`` (every dictionary parameter),
  ``optim/<name>/<key>`` (Adam's ``exp_avg``, ``exp_avg_sq``, ``step``),
  ``rng/torch`` (the CPU generator state), plus trainer state such as
  ``state/tokens_since_fired``;
* ``state.json``: step, tokens seen, normalisation factors, scalar trainer
  state, the config and its fingerprint, and the dictionary config.

Both files are written into a hidden temporary folder that is renamed into place,
so a kill -9 at any moment leaves either the previous checkpoint or the new
one. Older checkpoints beyond ``keep`` are then removed.

Example:
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> _ = save_checkpoint(root, 5, {"param/w": torch.ones(2)}, {"step": 5}, keep=2)
    >>> ckpt = latest_checkpoint(root)
    >>> ckpt.state["step"], ckpt.tensors["param/w"].tolist()
    (5, [1.0, 1.0])
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step_(\d{9})$")


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    root: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically under ``root`` and prune to the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:09d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / TENSORS_FILE))
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True))
        for name in (TENSORS_FILE, STATE_FILE):
            _fsync_file(staging / name)
        if final.exists():  # the same step written again (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read one checkpoint folder."""
    path = Path(path)
    return Checkpoint(path, load_file(str(path / TENSORS_FILE)), json.loads((path / STATE_FILE).read_text()))


def latest_checkpoint(root: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return load_checkpoint(found[-1]) if found else None


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: list[str]) -> dict[str, torch.Tensor]:
    """Adam's per-parameter state as ``optim/<param name>/<key>`` tensors."""
    out = {}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, param in zip(names, params):
        for key, value in optimizer.state.get(param, {}).items():
            out[f"optim/{name}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(optimizer: torch.optim.Optimizer, names: list[str], tensors: dict[str, torch.Tensor]) -> None:
    """Put saved Adam state back, in each parameter's own memory layout."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for name, param in zip(names, params):
        prefix = f"optim/{name}/"
        state = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                short = key[len(prefix) :]
                if value.dim() == 0:
                    state[short] = value.clone().to(param.device)
                else:
                    state[short] = torch.empty_like(param).copy_(value)
        if state:
            optimizer.state[param] = state
