"""Checkpoints as safetensors + JSON (never pickle) on any fsspec store, committed by one marker.

A checkpoint is a folder ``{checkpoint_dir}/step_{N:09d}/`` (N = steps done) with

* ``tensors.safetensors`` (one process), or one ``tensors-{r:05d}-of-{R:05d}.safetensors``
  per latent shard (``train.latent_parallel`` = R): ``param/<name>`` (every dictionary
  parameter or this shard's slice), ``optim/<name>/<key>`` (Adam's ``exp_avg``,
  ``exp_avg_sq``, ``step``), ``rng/torch`` (the CPU generator state), plus trainer state
  such as ``state/tokens_since_fired``;
* ``state.json``: step, tokens seen, normalisation factors, scalar trainer state, the
  config and its fingerprint, the dictionary config, and the sha256 of every tensor file.

``state.json`` is the commit marker: it is written last, by one process, after every
tensor file of the step is complete, and a folder without it is not a checkpoint. Every
file is written whole or not at all (local: temporary name, fsync, rename; object stores:
one complete upload), so a kill -9 at any moment leaves the previous checkpoint loadable
and never a mix of two steps. Loading verifies the recorded hashes. Pruning removes a
folder's marker first, so a half-deleted checkpoint is never seen as complete.

``checkpoint_dir`` is a local path or an fsspec URL (``s3://bucket/run``, ``memory://run``).

Example:
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> _ = save_checkpoint(root, 5, {"param/w": torch.ones(2)}, {"step": 5}, keep=2)
    >>> ckpt = latest_checkpoint(root)
    >>> ckpt.state["step"], ckpt.tensors["param/w"].tolist()
    (5, [1.0, 1.0])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load, load_file, save_file

from scope_hub.errors import IntegrityError

TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step_(\d{9})$")


@dataclass
class Checkpoint:
    """A loaded checkpoint (``path``: a local Path or a store URL)."""

    path: Path | str
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def shard_file(shard: int, shards: int) -> str:
    """Tensor file name of latent shard ``shard`` of ``shards`` (one process: ``tensors.safetensors``)."""
    return TENSORS_FILE if shards == 1 else f"tensors-{shard:05d}-of-{shards:05d}.safetensors"


def _store(root: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs, path.rstrip("/")


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _located(root: str | Path, fs: fsspec.AbstractFileSystem, path: str) -> Path | str:
    """How a found folder is handed back: a Path for local stores, a URL otherwise."""
    return Path(path) if _is_local(fs) else fs.unstrip_protocol(path)


def _sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _put_file(fs: fsspec.AbstractFileSystem, local_tmp: Path, target: str) -> None:
    """Make ``target`` hold ``local_tmp``'s bytes, all or nothing."""
    if _is_local(fs):
        with open(local_tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(local_tmp, target)
        return
    fs.put_file(str(local_tmp), target)  # one PUT, or one multipart upload that lands only when completed


def _write(fs: fsspec.AbstractFileSystem, folder: str, name: str, write: Any) -> str:
    """Write file ``folder/name`` atomically with ``write(local_path)``; returns its sha256."""
    local = _is_local(fs)
    if local:
        fs.makedirs(folder, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder if local else None))
    tmp = staging / f"{uuid.uuid4().hex}.tmp"
    try:
        write(tmp)
        digest = _sha256_file(tmp)
        _put_file(fs, tmp, f"{folder}/{name}")
        return digest
    finally:
        tmp.unlink(missing_ok=True)
        staging.rmdir()


def save_shard(root: str | Path, step: int, tensors: dict[str, torch.Tensor], shard: int = 0, shards: int = 1) -> str:
    """Write this shard's tensor file of checkpoint ``step`` (not yet a checkpoint); returns its sha256."""
    fs, base = _store(root)
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return _write(fs, f"{base}/step_{step:09d}", shard_file(shard, shards), lambda p: save_file(cpu, str(p)))


def commit_checkpoint(
    root: str | Path, step: int, state: dict[str, Any], hashes: list[str], keep: int = 2
) -> Path | str:
    """Write the marker that makes checkpoint ``step`` exist (after all its shards), then prune to ``keep``."""
    fs, base = _store(root)
    folder = f"{base}/step_{step:09d}"
    files = {shard_file(i, len(hashes)): digest for i, digest in enumerate(hashes)}
    text = json.dumps({**state, "files": files}, indent=1, sort_keys=True)
    _write(fs, folder, STATE_FILE, lambda p: Path(p).write_text(text))
    found = _complete(fs, base)
    for old in _step_folders(fs, base):
        if found and old < found[max(0, len(found) - keep)]:
            if fs.exists(f"{old}/{STATE_FILE}"):
                fs.rm_file(f"{old}/{STATE_FILE}")  # un-commit first: a half-deleted folder is no checkpoint
            fs.rm(old, recursive=True)
    return _located(root, fs, folder)


def save_checkpoint(
    root: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2
) -> Path | str:
    """Write a one-process checkpoint ``step`` under ``root`` and prune to the newest ``keep``."""
    fs, base = _store(root)
    folder = f"{base}/step_{step:09d}"
    fresh = not fs.exists(folder)
    try:
        digest = save_shard(root, step, tensors)
        return commit_checkpoint(root, step, state, [digest], keep)
    except BaseException:
        if fresh and fs.exists(folder) and not fs.exists(f"{folder}/{STATE_FILE}"):
            fs.rm(folder, recursive=True)
        raise


def _step_folders(fs: fsspec.AbstractFileSystem, base: str) -> list[str]:
    if not fs.isdir(base):
        return []
    names = [p.rstrip("/") for p in fs.ls(base, detail=False)]
    return sorted(p for p in names if _STEP_DIR.match(p.rsplit("/", 1)[-1]))


def _complete(fs: fsspec.AbstractFileSystem, base: str) -> list[str]:
    return [p for p in _step_folders(fs, base) if fs.isfile(f"{p}/{STATE_FILE}")]


def list_checkpoints(root: str | Path) -> list[Path | str]:
    """Committed checkpoint folders under ``root``, oldest first."""
    fs, base = _store(root)
    fs.invalidate_cache()
    return [_located(root, fs, p) for p in _complete(fs, base)]


def read_checkpoint_state(path: str | Path) -> dict[str, Any]:
    """A committed checkpoint's ``state.json`` alone (step, fingerprint, ...), without its tensors."""
    fs, folder = _store(path)
    with fs.open(f"{folder}/{STATE_FILE}", "rb") as handle:
        return json.loads(handle.read())


def load_checkpoint(path: str | Path, shard: int = 0) -> Checkpoint:
    """Read one checkpoint folder (latent shard ``shard`` of a sharded one), checking its hashes."""
    fs, folder = _store(path)
    state = read_checkpoint_state(path)
    files = state.get("files", {TENSORS_FILE: None})
    name = shard_file(shard, len(files))
    target = f"{folder}/{name}"
    if _is_local(fs):
        tensors = load_file(target)
        digest = _sha256_file(target) if files.get(name) else None
    else:
        with fs.open(target, "rb") as handle:
            data = handle.read()
        tensors, digest = load(data), hashlib.sha256(data).hexdigest()
    if files.get(name) and digest != files[name]:
        raise IntegrityError(
            f"{target} does not match the sha256 its checkpoint recorded: the store altered it; "
            "delete that step folder to resume from the previous checkpoint"
        )
    return Checkpoint(_located(path, fs, folder), tensors, state)


def load_whole_checkpoint(path: str | Path) -> Checkpoint:
    """A latent-sharded checkpoint joined into the one an unsharded run would hold at that step.

    Sharded tensors (parameters, their Adam state, dead-latent counters) are concatenated along
    the latent axis; replicated ones and the RNG state come from shard 0. The result is an
    ordinary one-process checkpoint (``latent_parallel`` 1): inspect it, export it, or resume
    from it with one process.
    """
    from trainers.latent_parallel import is_sharded, latent_dim

    first = load_checkpoint(path, 0)
    shards = len(first.state.get("files", {TENSORS_FILE: None}))
    if shards == 1:
        return first
    parts = [first.tensors] + [load_checkpoint(path, r).tensors for r in range(1, shards)]
    tensors = {}
    for key, value in first.tensors.items():
        kind, _, rest = key.partition("/")
        name = rest.rsplit("/", 1)[0] if kind == "optim" else rest
        if key == "state/tokens_since_fired":
            tensors[key] = torch.cat([p[key] for p in parts], dim=1)
        elif kind in ("param", "optim") and is_sharded(name) and value.dim() > 0:
            tensors[key] = torch.cat([p[key] for p in parts], dim=latent_dim(name, value))
        else:
            tensors[key] = value
    state = {**first.state, "latent_parallel": 1, "files": {TENSORS_FILE: None}}
    return Checkpoint(first.path, tensors, state)


def latest_checkpoint(root: str | Path, shard: int = 0) -> Checkpoint | None:
    """The newest committed checkpoint under ``root`` (this latent shard's tensors), or None."""
    found = list_checkpoints(root)
    return load_checkpoint(found[-1], shard) if found else None


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
