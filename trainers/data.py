"""Text data -> fixed-length token sequences for harvesting.

Sources: local text files (``.txt``, ``.md``, ...: one document each), ``.jsonl``/``.json`` records
(``text_field``, or ``messages_field`` for chats), a ``datasets`` dataset
(a ``save_to_disk`` folder, a local data folder, or a name already in the HF
cache; set ``HF_DATASETS_OFFLINE=1`` to forbid downloads), or the built-in
``corpus: stdlib-docstrings`` (:mod:`trainers.corpus`). Chats are rendered
with the tokenizer's chat template. Documents keep their file order; shuffling
happens on activations.

BOS and packing:

* ``packing=True``: documents (each starting with BOS when ``prepend_bos``) are
  concatenated and cut into windows; with ``prepend_bos`` every window starts
  with BOS: a window that begins mid-document gets one added before its
  ``context_size - 1`` stream tokens, as the model expects;
* ``packing=False``: one window per document, truncated, right-padded, with an
  attention mask.

Example:
    >>> from trainers.config import DataConfig
    >>> docs = [[1, 10, 11, 12], [1, 20, 21], [1, 30, 31, 32, 33, 34, 35]]
    >>> pack(docs, DataConfig(context_size=4), bos_id=1, pad_id=0)[0].tolist()
    [[1, 10, 11, 12], [1, 20, 21, 1], [1, 30, 31, 32], [1, 33, 34, 35]]
    >>> pack(docs[:2], DataConfig(context_size=4, packing=False), bos_id=1, pad_id=0)[0].tolist()
    [[1, 10, 11, 12], [1, 20, 21, 0]]
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scope_hub.errors import ConfigError
from trainers.config import DataConfig
from trainers.corpus import corpus_label, stdlib_documents


@dataclass
class TokenSequences:
    """Model-ready windows plus what identifies them."""

    input_ids: torch.Tensor
    """int64 ``[n_sequences, context_size]``."""
    attention_mask: torch.Tensor
    """int64 ``[n_sequences, context_size]``; 0 marks padding."""
    description: str
    """Human-readable data source."""
    sha256: str
    """sha256 of the token ids as consumed (text, tokenizer, BOS and packing choices all enter it)."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def iter_records(cfg: DataConfig) -> Iterator[Any]:
    """Raw records (strings or chat message lists) from files, then from the dataset."""
    paths = _expand(cfg.paths)
    for path in paths:
        if path.suffix in (".jsonl", ".json"):
            yield from (_field(row, cfg, str(path)) for row in _json_rows(path))
            continue
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; data files are text (.txt, .md, ...) or .jsonl/.json") from None
    if cfg.dataset:
        yield from (_field(row, cfg, cfg.dataset) for row in _dataset_rows(cfg))
    if cfg.corpus:
        yield from stdlib_documents()


def require_data(cfg: DataConfig) -> None:
    """Raise :class:`ConfigError` when no data source is configured at all."""
    if not (cfg.paths or cfg.dataset or cfg.corpus):
        raise ConfigError(
            "no data: set data.paths (text/JSONL files) or data.dataset "
            "(or data.corpus=stdlib-docstrings, a small built-in corpus)"
        )


def _expand(patterns: list[str]) -> list[Path]:
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise ConfigError(f"data.paths: {pattern!r} matches no file")
        out += [Path(m) for m in matches]
    return out


def _json_rows(path: Path) -> Iterator[dict]:
    if path.suffix == ".json":
        rows = json.loads(path.read_text())
        yield from (rows if isinstance(rows, list) else [rows])
        return
    with path.open() as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _dataset_rows(cfg: DataConfig) -> Iterable[dict]:
    try:
        import datasets
    except ImportError:
        raise ConfigError("data.dataset needs the `datasets` package: pip install datasets") from None
    path = Path(cfg.dataset)
    if path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists()
    ):
        loaded = datasets.load_from_disk(str(path))
        return loaded[cfg.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    return datasets.load_dataset(cfg.dataset, cfg.dataset_config, split=cfg.split)


def _field(row: Any, cfg: DataConfig, where: str) -> Any:
    if isinstance(row, str):
        return row
    key = cfg.messages_field or cfg.text_field
    if not isinstance(row, dict) or key not in row:
        raise ConfigError(f"{where}: a record lacks the field {key!r} (data.text_field / data.messages_field)")
    return row[key]


def tokenize_record(record: Any, tokenizer: Any, cfg: DataConfig) -> list[int]:
    """Token ids of one document; chats go through the chat template; BOS per ``prepend_bos``."""
    if isinstance(record, list):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("data.messages_field is set but the tokenizer has no chat template")
        record = tokenizer.apply_chat_template(record, tokenize=False)
    ids = list(tokenizer(record, add_special_tokens=False)["input_ids"])
    bos = tokenizer.bos_token_id
    if cfg.prepend_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def pack(
    docs: Iterable[list[int]], cfg: DataConfig, bos_id: int | None, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows ``[n, context_size]`` and attention masks from tokenized documents (see module doc)."""
    ctx, rows, masks = cfg.context_size, [], []
    if not cfg.packing:
        for doc in docs:
            doc = doc[:ctx]
            rows.append(doc + [pad_id] * (ctx - len(doc)))
            masks.append([1] * len(doc) + [0] * (ctx - len(doc)))
    else:
        lead = cfg.prepend_bos and bos_id is not None
        stream: list[int] = []
        for doc in docs:
            stream.extend(doc)
            while True:
                # A window starts with BOS: the stream's own (a document start) or an added one.
                own = not lead or stream[:1] == [bos_id]
                body = ctx if own else ctx - 1
                if len(stream) < body:
                    break
                rows.append(stream[:body] if own else [bos_id, *stream[:body]])
                stream = stream[body:]
        masks = [[1] * ctx for _ in rows]
    if not rows:
        raise ConfigError(f"no complete {ctx}-token window in the data; add text or lower data.context_size")
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(masks, dtype=torch.int64)


def token_sequences(cfg: DataConfig, tokenizer: Any) -> TokenSequences:
    """Read, tokenize and pack the configured data (up to ``max_tokens``)."""
    require_data(cfg)

    def docs() -> Iterator[list[int]]:
        total = 0
        for record in iter_records(cfg):
            ids = tokenize_record(record, tokenizer, cfg)
            yield ids
            total += len(ids)
            if cfg.max_tokens and total >= cfg.max_tokens + cfg.context_size:
                return

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids, mask = pack(docs(), cfg, tokenizer.bos_token_id, pad)
    if cfg.max_tokens:
        keep = max(1, cfg.max_tokens // cfg.context_size)
        ids, mask = ids[:keep], mask[:keep]
    digest = hashlib.sha256(ids.to(torch.int64).numpy().tobytes())
    digest.update(mask.numpy().tobytes())
    sources = [
        *cfg.paths,
        *([f"{cfg.dataset}:{cfg.split}"] if cfg.dataset else []),
        *([corpus_label()] if cfg.corpus else []),
    ]
    return TokenSequences(ids, mask, ", ".join(sources), digest.hexdigest())


def kept_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, bos_id: int | None, exclude_bos: bool
) -> torch.Tensor:
    """bool ``[n, ctx]``: positions whose activations are harvested (not padding; not BOS if excluded).

    Example:
        >>> kept_positions(torch.tensor([[1, 5, 1, 6, 0]]), torch.tensor([[1, 1, 1, 1, 0]]), 1, True).tolist()
        [[False, True, False, True, False]]
    """
    keep = attention_mask.bool()
    if exclude_bos and bos_id is not None:
        keep &= input_ids != bos_id
    return keep
