"""Harvested activations on disk: safetensors shards, memory-mapped back, resumable.

Layout of a harvest folder (format ``scope-hub-harvest``, version 1)::

    harvest.json              metadata + the list of finished shards (rewritten atomically)
    shard_00000.safetensors   x [n, L, d_in]          activations read by the encoder
                              target [n, L, d_out]    (only when the target is another site)
                              token_id int32 [n]      token at each row
                              sequence int32 [n]      window index in the token data
                              position int32 [n]      position inside the window

Rows are in harvest order (window by window, positions in order; BOS and
padding dropped when configured). Each shard holds whole windows, and a shard
is listed in ``harvest.json`` only after its file is complete, so a killed
harvest resumes after its last listed shard. ``complete`` turns true at the end.
The ``fingerprint`` (model, revision, hookpoints, data hash, BOS choice, dtype)
must match to resume or reuse.

Reading maps each shard with ``numpy.memmap`` straight from the safetensors
data offsets (no copy until rows are gathered), so several trainings can
share one harvest and datasets larger than memory work.

Example:
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> w = ShardWriter(root, {"fingerprint": "f", "d_in": 2, "d_out": 2, "n_layers": 1,
    ...                        "reconstructs_input": True, "storage_dtype": "float32"}, shard_tokens=4)
    >>> w.add({"x": torch.arange(6.).view(3, 1, 2), "token_id": torch.zeros(3, dtype=torch.int32),
    ...        "sequence": torch.zeros(3, dtype=torch.int32), "position": torch.arange(3, dtype=torch.int32)}, 1)
    >>> w.finish()
    >>> HarvestReader(root).rows(torch.tensor([2, 0]))[0][:, 0].tolist()
    [[4.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from scope_hub.errors import ConfigError
from trainers.sources import ActivationSource, rank_slice

FORMAT, VERSION, META_FILE = "scope-hub-harvest", 1, "harvest.json"
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def read_meta(root: str | Path) -> dict[str, Any] | None:
    """The harvest's metadata, or None when the folder holds no harvest."""
    path = Path(root) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_meta(root: Path, meta: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".harvest.", dir=root)
    with os.fdopen(fd, "w") as handle:
        json.dump(meta, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, root / META_FILE)


class ShardWriter:
    """Appends activation rows; writes a shard whenever ``shard_tokens`` rows are buffered."""

    def __init__(self, root: str | Path, meta: dict[str, Any], shard_tokens: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_tokens = shard_tokens
        existing = read_meta(self.root)
        if existing is not None:
            if existing["fingerprint"] != meta["fingerprint"]:
                raise ConfigError(
                    f"{self.root} holds a harvest of other data/model/site/layers; give this "
                    "harvest its own harvest.cache_dir"
                )
            self.meta = existing
        else:
            self.meta = {"format": FORMAT, "version": VERSION, **meta, "complete": False, "tokens": 0, "shards": []}
            _write_meta(self.root, self.meta)
        self._buffer: list[dict[str, torch.Tensor]] = []
        self._buffered = 0
        self._next_sequence = self.meta["shards"][-1]["sequences"][1] if self.meta["shards"] else 0
        self._pending_end = self._next_sequence

    @property
    def next_sequence(self) -> int:
        """First window not yet stored in a listed shard (where a resumed harvest starts)."""
        return self._next_sequence

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    def add(self, rows: dict[str, torch.Tensor], n_sequences: int) -> None:
        """Buffer the rows of the next ``n_sequences`` windows; flush full shards."""
        dtype = _TORCH[self.meta["storage_dtype"]]
        self._buffer.append({k: v.to(dtype) if v.is_floating_point() else v for k, v in rows.items()})
        self._buffered += rows["x"].shape[0]
        self._pending_end += n_sequences
        if self._buffered >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one shard and list it."""
        if not self._buffer:
            return
        tensors = {k: torch.cat([b[k] for b in self._buffer]).contiguous() for k in self._buffer[0]}
        name = f"shard_{len(self.meta['shards']):05d}.safetensors"
        tmp = self.root / f".{name}.tmp"
        save_file(tensors, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / name)
        n = tensors["x"].shape[0]
        self.meta["shards"].append({"file": name, "tokens": n, "sequences": [self._next_sequence, self._pending_end]})
        self.meta["tokens"] += n
        self._next_sequence = self._pending_end
        _write_meta(self.root, self.meta)
        self._buffer, self._buffered = [], 0

    def finish(self) -> None:
        """Flush and mark the harvest complete."""
        self.flush()
        self.meta["complete"] = True
        _write_meta(self.root, self.meta)


def _memmap(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only memmap (bf16 as uint16)."""
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(header_len))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, _end = info["data_offsets"]
        shape = tuple(info["shape"])
        out[name] = np.memmap(path, dtype=_NP[info["dtype"]], mode="r", offset=8 + header_len + begin, shape=shape)
    return out


class HarvestReader:
    """Random access to the rows of a (complete or partial) harvest."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta = read_meta(self.root)
        if meta is None or meta.get("format") != FORMAT:
            raise FileNotFoundError(f"{self.root}: no {FORMAT} harvest (missing {META_FILE})")
        if meta["version"] > VERSION:
            raise ValueError(f"{self.root}: harvest format v{meta['version']} is newer than this trainer (v{VERSION})")
        self.meta = meta
        self.shards = [_memmap(self.root / s["file"]) for s in meta["shards"]]
        counts = torch.tensor([s["tokens"] for s in meta["shards"]], dtype=torch.int64)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        self.dtype = _TORCH[meta["storage_dtype"]]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _take(self, name: str, index: torch.Tensor) -> torch.Tensor:
        order = torch.argsort(index)  # read each shard's rows in file order
        sorted_index = index[order]
        shard_of = torch.searchsorted(self.starts, sorted_index, right=True) - 1
        parts = []
        for s in torch.unique(shard_of).tolist():
            local = (sorted_index[shard_of == s] - self.starts[s]).numpy()
            parts.append(torch.from_numpy(np.ascontiguousarray(self.shards[s][name][local])))
        rows = torch.cat(parts)
        if name != "token_id" and self.dtype == torch.bfloat16:
            rows = rows.view(torch.bfloat16)
        out = torch.empty_like(rows)
        out[order] = rows
        return out.float() if out.is_floating_point() else out

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)`` at global row ``index`` (``target is x`` for SAE harvests)."""
        x = self._take("x", index)
        return (x, x) if self.meta["reconstructs_input"] else (x, self._take("target", index))


class ShardSource(ActivationSource):
    """Training batches from a harvest: a seeded permutation per epoch over the training rows.

    The last ``eval_tokens`` rows (at most half the harvest) are held out for evaluation.
    """

    def __init__(self, root: str | Path, seed: int = 0, eval_tokens: int = 0) -> None:
        self.reader = HarvestReader(root)
        meta = self.reader.meta
        self.seed, self.n_layers = seed, meta["n_layers"]
        self.d_in, self.d_out = meta["d_in"], meta["d_out"]
        self.reconstructs_input = meta["reconstructs_input"]
        total = len(self.reader)
        self.n_eval = min(eval_tokens, total // 2)
        self.n_train = total - self.n_eval
        self._perms: dict[int, torch.Tensor] = {}

    def describe(self) -> dict[str, Any]:
        data = self.reader.meta.get("data", {})
        return {
            "dataset": data.get("description"),
            "dataset_sha256": data.get("sha256"),
            "harvest": str(self.reader.root),
        }

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(
                    self.n_train, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                )
            }
        return self._perms[epoch]

    def global_indices(self, step: int, batch_size: int) -> torch.Tensor:
        """Row indices of global batch ``step`` (epochs wrap with a fresh permutation)."""
        start, parts = step * batch_size, []
        while sum(p.numel() for p in parts) < batch_size:
            pos = start + sum(p.numel() for p in parts)
            epoch, offset = divmod(pos, self.n_train)
            take = min(batch_size - sum(p.numel() for p in parts), self.n_train - offset)
            parts.append(self._perm(epoch)[offset : offset + take])
        return torch.cat(parts)

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        return self.reader.rows(self.global_indices(step, batch_size)[rank_slice(batch_size, rank, world)])

    def eval_batches(self, tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        end = self.n_train + min(tokens, self.n_eval) if self.n_eval else min(tokens, self.n_train)
        start = self.n_train if self.n_eval else 0
        for lo in range(start, end, batch_size):
            yield self.reader.rows(torch.arange(lo, min(lo + batch_size, end)))
