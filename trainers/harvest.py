"""Harvesting activations through the same hookpoint adapters and hooks ScopedModel uses.

Sites resolve to hookpoints with :func:`scope_hub.hookpoints.adapter_for`; the
forward captures them with :func:`scope_hub.hooks.capture` and ends at the last
needed layer with :func:`scope_hub.hooks.stop_after` (no later layers, no
``lm_head``). Rows at padding (and at BOS when ``data.exclude_bos``) are dropped.

Two ways to feed training:

* :func:`harvest_to_disk` writes shards (:mod:`trainers.shards`), resumable, reusable;
* :class:`StreamingSource` harvests on the fly: the kept-token stream is cut
  into chunks of ``harvest.stream_window`` batches; a chunk is harvested,
  shuffled with a seed of its own, and served batch by batch. Batch ``s`` only
  depends on (seed, s), so resuming re-harvests at most one chunk.

Example:
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> from trainers.config import load_config
    >>> model = tiny_gemma3()
    >>> cfg = load_config(None, ["model.id=tiny", "harvest.layer=1"])
    >>> spec = site_spec(model, cfg)
    >>> [str(h) for h in spec.inputs], str(spec.stop)
    (['model.layers.1.output'], 'model.layers.1.output')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from scope_hub.errors import ConfigError
from scope_hub.hookpoints import Hookpoint, adapter_for
from scope_hub.hooks import capture, stop_after
from scope_hub.kinds import kind
from trainers.config import TrainConfig
from trainers.data import TokenSequences, kept_positions
from trainers.progress import show_progress_by_default
from trainers.shards import ShardWriter
from trainers.sources import ActivationSource, rank_slice, step_generator


@dataclass(frozen=True)
class SiteSpec:
    """Resolved hookpoints of a run."""

    layers: list[int]
    inputs: list[Hookpoint]
    outputs: list[Hookpoint] | None
    """None when the dictionary reconstructs its input (SAEs)."""
    stop: Hookpoint | None

    def describe(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "hookpoints_in": [str(h) for h in self.inputs],
            "hookpoints_out": [str(h) for h in self.outputs] if self.outputs else None,
        }


def site_spec(model: Any, cfg: TrainConfig) -> SiteSpec:
    """Hookpoints for the configured site(s) and layer(s) of ``model``."""
    adapter = adapter_for(model)
    if kind(cfg.dictionary.type).per_layer_decoders:
        layers = list(cfg.harvest.layers or [])
    else:
        if cfg.harvest.layer is None:
            raise ConfigError("harvest.layer is required for a single-layer dictionary (e.g. harvest.layer=6)")
        layers = [cfg.harvest.layer]
    inputs = [adapter.hookpoint(cfg.harvest.site, layer) for layer in layers]
    outputs = None
    if not kind(cfg.dictionary.type).reconstructs_input:
        outputs = [adapter.hookpoint(cfg.site_out, layer) for layer in layers]
    return SiteSpec(layers, inputs, outputs, adapter.stop_hookpoint(inputs + (outputs or [])))


def load_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` for ``cfg.model``: a local folder, a Hub id (HF cache), or a
    model scope-hub converts offline (``gemma-3-270m``; ``google/gemma-3-270m`` falls back to it when
    the Hub cache does not have it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scope_hub.model_resolution import load_error, resolve_model
    from scope_hub.models import load_causal_lm

    dtype = getattr(torch, cfg.model.dtype)
    ident = resolve_model(cfg.model.id, cfg.model.revision)
    if Path(ident).is_dir():
        model, tok = load_causal_lm(ident, dtype=dtype)
        return model.to(cfg.model.device), tok

    def hub(local_only: bool) -> tuple[Any, Any]:
        kwargs = {"revision": cfg.model.revision, "local_files_only": local_only}
        return (
            AutoModelForCausalLM.from_pretrained(ident, dtype=dtype, **kwargs),
            AutoTokenizer.from_pretrained(ident, **kwargs),
        )

    try:  # the HF cache first: no network round trips (or retries, when offline) for a cached model
        model, tok = hub(local_only=True)
    except OSError:
        try:
            model, tok = hub(local_only=False)
        except OSError as error:
            raise load_error(ident, error) from error
    return model.eval().to(cfg.model.device), tok


class Harvester:
    """Runs the model on windows and returns the kept rows of every hookpoint."""

    def __init__(self, model: Any, spec: SiteSpec, bos_id: int | None, exclude_bos: bool) -> None:
        self.model, self.spec, self.bos_id, self.exclude_bos = model, spec, bos_id, exclude_bos
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``x [n, L, d_in]`` (+ ``target``), ``token_id``, ``sequence`` (0-based in this call), ``position``."""
        hps = self.spec.inputs + (self.spec.outputs or [])
        stopper = stop_after(self.model, self.spec.stop) if self.spec.stop is not None else nullcontext()
        with capture(self.model, hps) as acts, stopper:
            self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), use_cache=False
            )
        keep = kept_positions(input_ids, attention_mask, self.bos_id, self.exclude_bos).to(self.device)
        rows = {"x": torch.stack([acts[str(h)][keep].float().cpu() for h in self.spec.inputs], 1)}
        if self.spec.outputs:
            rows["target"] = torch.stack([acts[str(h)][keep].float().cpu() for h in self.spec.outputs], 1)
        where = keep.cpu().nonzero()
        rows["sequence"] = where[:, 0].to(torch.int32)
        rows["position"] = where[:, 1].to(torch.int32)
        rows["token_id"] = input_ids[keep.cpu()].to(torch.int32)
        return rows


def harvest_fingerprint(cfg: TrainConfig, spec: SiteSpec, data: TokenSequences) -> str:
    """Identity of a harvest: same model, sites, data and choices -> same fingerprint."""
    ident = {
        "model": cfg.model.id,
        "revision": cfg.model.revision,
        "dtype": cfg.model.dtype,
        **spec.describe(),
        "data": data.sha256,
        "exclude_bos": cfg.data.exclude_bos,
        "storage": cfg.harvest.storage_dtype,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def harvest_to_disk(
    harvester: Harvester, data: TokenSequences, cfg: TrainConfig, root: str | Path, progress: bool | None = None
) -> Path:
    """Harvest every window of ``data`` into shards under ``root`` (resuming a partial harvest)."""
    spec = harvester.spec
    meta = {
        "fingerprint": harvest_fingerprint(cfg, spec, data),
        "model": cfg.model.id,
        "model_revision": cfg.model.revision,
        "site": cfg.harvest.site,
        "site_out": cfg.site_out if spec.outputs else None,
        **spec.describe(),
        "n_layers": len(spec.layers),
        "d_in": None,
        "d_out": None,
        "reconstructs_input": spec.outputs is None,
        "storage_dtype": cfg.harvest.storage_dtype,
        "exclude_bos": cfg.data.exclude_bos,
        "data": {
            "description": data.description,
            "sha256": data.sha256,
            "n_sequences": len(data),
            "context_size": data.input_ids.shape[1],
        },
    }
    writer = ShardWriter(root, meta, cfg.harvest.shard_tokens)
    if writer.complete:
        return Path(root)
    step = cfg.harvest.batch_sequences
    show = show_progress_by_default() if progress is None else progress
    with tqdm(total=len(data), initial=writer.next_sequence, unit="seq", disable=not show, desc="harvest") as bar:
        for lo in range(writer.next_sequence, len(data), step):
            hi = min(lo + step, len(data))
            rows = harvester(data.input_ids[lo:hi], data.attention_mask[lo:hi])
            rows["sequence"] += lo
            if writer.meta["d_in"] is None:
                writer.meta["d_in"] = rows["x"].shape[-1]
                writer.meta["d_out"] = rows.get("target", rows["x"]).shape[-1]
            writer.add(rows, hi - lo)
            bar.update(hi - lo)
    writer.finish()
    return Path(root)


class StreamingSource(ActivationSource):
    """Harvest while training (see module doc); the last ``eval_tokens`` kept rows are held out."""

    def __init__(
        self,
        harvester: Harvester,
        data: TokenSequences,
        *,
        seed: int,
        batch_size: int,
        window: int,
        batch_sequences: int = 8,
        eval_tokens: int = 0,
    ) -> None:
        self.harvester, self.data, self.seed = harvester, data, seed
        self.batch_sequences = batch_sequences
        self.chunk = batch_size * window
        keep = kept_positions(data.input_ids, data.attention_mask, harvester.bos_id, harvester.exclude_bos)
        self.kept_before = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)])
        total = int(self.kept_before[-1])
        self.n_eval = min(eval_tokens, total // 2)
        self.n_train = total - self.n_eval
        spec = harvester.spec
        self.n_layers = len(spec.layers)
        probe = harvester(data.input_ids[:1], data.attention_mask[:1])
        self.d_in = probe["x"].shape[-1]
        self.d_out = probe.get("target", probe["x"]).shape[-1]
        self.reconstructs_input = spec.outputs is None
        self._cached: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.data.description, "dataset_sha256": self.data.sha256}

    def _rows(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept rows ``start:end`` of the stream (harvesting the windows that hold them)."""
        first = int(torch.searchsorted(self.kept_before, start, right=True)) - 1
        last = int(torch.searchsorted(self.kept_before, end, right=False))
        x_parts, t_parts = [], []
        for lo in range(first, last, self.batch_sequences):
            hi = min(lo + self.batch_sequences, last)
            rows = self.harvester(self.data.input_ids[lo:hi], self.data.attention_mask[lo:hi])
            x_parts.append(rows["x"])
            t_parts.append(rows.get("target", rows["x"]))
        x, t = torch.cat(x_parts), torch.cat(t_parts)
        offset = start - int(self.kept_before[first])
        x, t = x[offset : offset + end - start], t[offset : offset + end - start]
        return (x, x) if self.reconstructs_input else (x, t)

    def _chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cached is None or self._cached[0] != index:
            start = index * self.chunk
            if start + self.chunk > self.n_train:
                raise ValueError(
                    f"streaming data exhausted at chunk {index}: {self.n_train} training tokens; "
                    "add data, lower train.tokens, or harvest to disk (harvest.cache_dir) for epochs"
                )
            x, t = self._rows(start, start + self.chunk)
            perm = torch.randperm(self.chunk, generator=step_generator(self.seed, index, stream=2))
            self._cached = (index, x[perm], t[perm])
        return self._cached[1], self._cached[2]

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        per_chunk = self.chunk // batch_size
        x, t = self._chunk(step // per_chunk)
        lo = (step % per_chunk) * batch_size
        rows = slice(lo, lo + batch_size)
        mine = rank_slice(batch_size, rank, world)
        xb = x[rows][mine]
        return (xb, xb) if self.reconstructs_input else (xb, t[rows][mine])

    def eval_batches(self, tokens: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = self.n_train
        end = start + min(tokens, self.n_eval)
        for lo in range(start, end, batch_size):
            yield self._rows(lo, min(lo + batch_size, end))
