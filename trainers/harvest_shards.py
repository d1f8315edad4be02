"""Harvested activations in a folder or on any fsspec store: safetensors shards, resumable, written by many ranks.

Layout of a harvest (format ``scope-hub-harvest``, version 2)::

    harvest.json              metadata; the shard list and ``complete: true`` once every shard is written
    shard_00000.safetensors   one tensor per hookpoint, named by it: ``model.layers.3.output`` [n, width]
                              token_id int32 [n]   token at each row
                              sequence int32 [n]   window index in the token data
                              position int32 [n]   position inside the window
    shard_00000.json          the shard's record (rows, windows, sha256), written after the shard: a shard
                              counts as done only once its record exists

Shard ``i`` holds windows ``[i*S, (i+1)*S)`` of the token data (``S = shard_sequences``, fixed by the data
and ``harvest.shard_tokens``); its rows are in window order, then position order (BOS and padding dropped
when configured). The rows of a harvest are its shards in index order: the same rows in the same order
whatever number of ranks wrote them. Under torchrun rank ``r`` of ``R`` harvests the unfinished shards
``r, r+R, ...``; after a barrier rank 0 merges the records into ``harvest.json`` (one atomic write). A
killed harvest resumes by harvesting only the shards without a record, on any number of ranks. The
``fingerprint`` (model, revision, hookpoints, data hash, BOS choice, dtype, shard size) must match to
resume or reuse.

Every write is one atomic put (temp file + rename in a folder, one PUT on an object store), so a reader
never sees a half-written shard. Shards in a local folder are memory-mapped straight from their
safetensors data offsets (no copy until rows are gathered); shards on a remote store are downloaded once
into the local cache (``$SCOPE_HUB_CACHE/harvests``), checked against their sha256, then mapped.
Version 1 harvests (``x [n, L, d_in]`` and ``target`` tensors) still read.

Example:
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> writer = ShardWriter(root, {"fingerprint": "f", "storage_dtype": "float32", "shard_sequences": 1,
    ...     "n_shards": 1, "hookpoints_in": ["h"], "hookpoints_out": None})
    >>> _ = writer.write(0, {"h": torch.arange(6.).view(3, 2), "token_id": torch.zeros(3, dtype=torch.int32),
    ...     "sequence": torch.zeros(3, dtype=torch.int32), "position": torch.arange(3, dtype=torch.int32)}, [0, 1])
    >>> _ = writer.merge()
    >>> HarvestReader(root).rows(torch.tensor([2, 0]))[0][:, 0].tolist()
    [[4.0, 5.0], [0.0, 1.0]]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from scope_hub.errors import ConfigError
from scope_hub.registry.backends.store import Store
from trainers.sources import ActivationSource, rank_slice

FORMAT, VERSION, META_FILE = "scope-hub-harvest", 2, "harvest.json"
ROW_FIELDS = ("token_id", "sequence", "position")
"""Per-row bookkeeping tensors stored next to the activations."""
_NP = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64}
_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def open_store(root: str | Path) -> Store:
    """The store a harvest lives in: a local folder (plain path or ``file://``), ``s3://`` or ``memory://``."""
    from scope_hub.registry.backends import open_backend

    store = getattr(open_backend(str(root)), "store", None)
    if store is None:
        raise ConfigError(f"harvest.cache_dir={root}: use a folder or a file://, s3:// or memory:// URL")
    return store


def _local_folder(store: Store) -> Path | None:
    return getattr(store, "base", None)


def read_meta(root: str | Path | Store) -> dict[str, Any] | None:
    """The harvest's metadata, or None when the folder/URL holds no harvest."""
    store = root if isinstance(root, Store) else open_store(root)
    try:
        return json.loads(store.read_bytes(META_FILE))
    except FileNotFoundError:
        return None


def record_name(index: int) -> str:
    return f"shard_{index:05d}.json"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Writes shards (and their records) of one harvest; :meth:`merge` lists them in ``harvest.json``.

    Several writers (one per rank) may write different shards of the same harvest at once.
    """

    def __init__(self, root: str | Path, meta: dict[str, Any], create: bool = True) -> None:
        self.store = open_store(root)
        self.root = root
        existing = read_meta(self.store)
        if existing is not None and (existing["fingerprint"] != meta["fingerprint"] or existing.get("version") != 2):
            raise ConfigError(
                f"{root} holds a harvest of other data/model/site/layers (or an older format); give this "
                "harvest its own harvest.cache_dir"
            )
        if existing is not None:
            self.meta = existing
        else:
            self.meta = {"format": FORMAT, "version": VERSION, **meta, "complete": False, "tokens": 0, "shards": []}
            if create:
                self.store.put_bytes(META_FILE, json.dumps(self.meta, indent=1).encode())

    @property
    def complete(self) -> bool:
        return bool(self.meta["complete"])

    def records(self) -> dict[int, dict[str, Any]]:
        """Records of the shards written so far, by shard index."""
        names = [n for n in self.store.list_names("") if n.startswith("shard_") and n.endswith(".json")]
        found = self.store.read_many(names)
        return {int(n[6:11]): json.loads(b) for n, b in found.items() if b is not None}

    def write(self, index: int, rows: dict[str, torch.Tensor], sequences: list[int]) -> dict[str, Any]:
        """Store shard ``index`` (windows ``sequences = [start, end)``), then its record."""
        dtype = _TORCH[self.meta["storage_dtype"]]
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in rows.items()}
        name = shard_name(index)
        folder = _local_folder(self.store)
        staging = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            save_file(tensors, str(tmp))
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            sha = _sha256(tmp)
            if folder is not None:
                os.replace(tmp, Path(folder) / name)  # same folder: the rename is atomic
            else:
                self.store.put_file(name, tmp)  # one PUT: the object appears whole or not at all
        finally:
            tmp.unlink(missing_ok=True)
        widths = {k: v.shape[-1] for k, v in tensors.items() if k not in ROW_FIELDS}
        n = int(tensors["sequence"].shape[0])
        record = {"file": name, "tokens": n, "sequences": list(sequences), "sha256": sha, "widths": widths}
        self.store.put_bytes(record_name(index), json.dumps(record).encode())
        return record

    def merge(self) -> dict[str, Any]:
        """List every shard in ``harvest.json`` and mark it complete (one writer, after all ranks finished)."""
        records = self.records()
        missing = [i for i in range(self.meta["n_shards"]) if i not in records]
        if missing:
            raise RuntimeError(f"{self.root}: shards {missing[:5]} were not written; run the harvest again")
        shards = [records[i] for i in range(self.meta["n_shards"])]
        widths = next((s["widths"] for s in shards if s["tokens"]), shards[0]["widths"])
        ins, outs = self.meta["hookpoints_in"], self.meta["hookpoints_out"]
        self.meta.update(
            shards=[{k: s[k] for k in ("file", "tokens", "sequences", "sha256")} for s in shards],
            tokens=sum(s["tokens"] for s in shards),
            widths=widths,
            d_in=widths.get(ins[0]) if ins else None,
            d_out=widths.get((outs or ins)[0]) if ins else None,
            complete=True,
        )
        self.store.put_bytes(META_FILE, json.dumps(self.meta, indent=1).encode())
        return self.meta


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


def _fetch(store: Store, shard: dict[str, Any], fingerprint: str) -> Path:
    """A remote shard in the local cache (downloaded once, sha256-checked)."""
    from scope_hub.registry.settings import cache_root

    folder = cache_root() / "harvests" / fingerprint[:32]
    path = folder / shard["file"]
    if path.is_file() and (shard.get("sha256") is None or _sha256(path) == shard["sha256"]):
        return path
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{shard['file']}.{uuid.uuid4().hex}.tmp"
    try:
        with store.open_read(shard["file"]) as src, open(tmp, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
        if shard.get("sha256") and _sha256(tmp) != shard["sha256"]:
            raise OSError(f"{store.url}/{shard['file']}: sha256 mismatch; the harvest is damaged, harvest again")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class HarvestReader:
    """Random access to the rows of a harvest, as ``(x [n, L, d_in], target [n, L, d_out])``.

    ``inputs``/``outputs`` pick the hookpoints stacked into ``x`` and ``target`` (default: the harvest's
    own, ``hookpoints_in``/``hookpoints_out``); ``outputs=None`` with ``reconstructs_input`` gives
    ``target is x``.
    """

    def __init__(self, root: str | Path, inputs: list[str] | None = None, outputs: list[str] | None = None) -> None:
        self.store = open_store(root)
        self.root = root
        meta = read_meta(self.store)
        if meta is None or meta.get("format") != FORMAT:
            raise FileNotFoundError(f"{root}: no {FORMAT} harvest (missing {META_FILE})")
        if meta["version"] > VERSION:
            raise ValueError(f"{root}: harvest format v{meta['version']} is newer than this trainer (v{VERSION})")
        self.meta = meta
        folder = _local_folder(self.store)
        paths = [
            folder / s["file"] if folder is not None else _fetch(self.store, s, meta["fingerprint"])
            for s in meta["shards"]
        ]
        self.shards = [_memmap(p) for p in paths]
        counts = torch.tensor([s["tokens"] for s in meta["shards"]], dtype=torch.int64)
        self.starts = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        self.dtype = _TORCH[meta["storage_dtype"]]
        if meta["version"] == 1:
            self.inputs, self.outputs = ["x"], None if meta["reconstructs_input"] else ["target"]
        else:
            self.inputs = inputs or meta["hookpoints_in"]
            self.outputs = outputs if inputs else meta["hookpoints_out"]
            unknown = [h for h in [*self.inputs, *(self.outputs or [])] if h not in meta["widths"]]
            if unknown:
                raise ConfigError(
                    f"{root}: the harvest has no hookpoint {unknown[0]} (it holds {list(meta['widths'])})"
                )

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
        if name not in ROW_FIELDS and self.dtype == torch.bfloat16:
            rows = rows.view(torch.bfloat16)
        out = torch.empty_like(rows)
        out[order] = rows
        return out.float() if out.is_floating_point() else out

    def _stack(self, names: list[str], index: torch.Tensor) -> torch.Tensor:
        if self.meta["version"] == 1:
            return self._take(names[0], index)
        return torch.stack([self._take(h, index) for h in names], 1)

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)`` at global row ``index`` (``target is x`` for SAE harvests)."""
        x = self._stack(self.inputs, index)
        return (x, x) if self.outputs is None else (x, self._stack(self.outputs, index))

    def column(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """One stored tensor (a hookpoint, ``token_id``, ``sequence`` or ``position``) at rows ``index``."""
        return self._take(name, index)


class ShardSource(ActivationSource):
    """Training batches from a harvest: a seeded permutation per epoch over the training rows.

    The last ``eval_tokens`` rows (at most half the harvest) are held out for evaluation. ``inputs`` and
    ``outputs`` pick one dictionary's hookpoints out of a harvest of several.
    """

    def __init__(
        self,
        root: str | Path,
        seed: int = 0,
        eval_tokens: int = 0,
        inputs: list[str] | None = None,
        outputs: list[str] | None = None,
    ) -> None:
        self.reader = HarvestReader(root, inputs, outputs)
        meta, reader = self.reader.meta, self.reader
        self.seed, self.n_layers = seed, len(reader.inputs) if meta["version"] > 1 else meta["n_layers"]
        if meta["version"] == 1:
            self.d_in, self.d_out = meta["d_in"], meta["d_out"]
        else:
            self.d_in = meta["widths"][reader.inputs[0]]
            self.d_out = meta["widths"][(reader.outputs or reader.inputs)[0]]
        self.reconstructs_input = reader.outputs is None
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
