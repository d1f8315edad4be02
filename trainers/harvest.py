"""Harvesting activations through the same hookpoint adapters and hooks ScopedModel uses.

Sites resolve to hookpoints with :func:`scope_hub.hookpoints.adapter_for`; the
forward captures them with :func:`scope_hub.hooks.capture` and ends at the last
needed layer with :func:`scope_hub.hooks.stop_after` (no later layers, no
``lm_head``). Rows at padding (and at BOS when ``data.exclude_bos``) are dropped.

A run of several dictionaries (``harvest.layers``/``harvest.sites`` on SAEs or
transcoders, see :func:`target_configs`) captures every target's hookpoints in the
same forward, which stops after the deepest of them.

Two ways to feed training:

* :func:`harvest_to_disk` writes shards (:mod:`trainers.harvest_shards`), one
  harvest for every hookpoint, resumable, reusable, written by every rank;
* :mod:`trainers.streaming` harvests on the fly, in shuffled chunks shared by
  the dictionaries of a run.

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
from trainers.distributed import DistContext
from trainers.harvest_shards import ShardWriter
from trainers.progress import PlainTicker, show_progress_by_default


@dataclass(frozen=True)
class SiteSpec:
    """Resolved hookpoints of one dictionary (or, for the harvester, of every dictionary of a run)."""

    layers: list[int]
    inputs: list[Hookpoint]
    outputs: list[Hookpoint] | None
    """None when the dictionary reconstructs its input (SAEs)."""
    stop: Hookpoint | None

    @property
    def hookpoints(self) -> list[Hookpoint]:
        """Inputs then outputs, each once."""
        return list(dict.fromkeys([*self.inputs, *(self.outputs or [])]))

    def describe(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "hookpoints_in": [str(h) for h in self.inputs],
            "hookpoints_out": [str(h) for h in self.outputs] if self.outputs else None,
        }

    def stack(self, rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, L, d_in], target [n, L, d_out])`` of this dictionary from harvested rows (``target is x``
        for SAEs)."""
        x = torch.stack([rows[str(h)] for h in self.inputs], 1)
        return (x, x) if self.outputs is None else (x, torch.stack([rows[str(h)] for h in self.outputs], 1))


@dataclass(frozen=True)
class Target:
    """One dictionary of a run: its own single-dictionary config (output folder, checkpoints, key) and sites."""

    name: str
    """``resid_post/layer_3`` (the subfolder of ``output.dir``); empty for a one-dictionary run."""
    cfg: TrainConfig
    spec: SiteSpec


def _single_spec(adapter: Any, cfg: TrainConfig) -> SiteSpec:
    if kind(cfg.dictionary.type).per_layer_decoders:
        layers = _layer_list(cfg.harvest.layers, adapter.n_layers)
    else:
        if cfg.harvest.layer is None:
            raise ConfigError("harvest.layer is required for a single-layer dictionary (e.g. harvest.layer=6)")
        layers = [cfg.harvest.layer]
    inputs = [adapter.hookpoint(cfg.harvest.site, layer) for layer in layers]
    outputs = None
    if not kind(cfg.dictionary.type).reconstructs_input:
        outputs = [adapter.hookpoint(cfg.site_out, layer) for layer in layers]
    return SiteSpec(layers, inputs, outputs, adapter.stop_hookpoint(inputs + (outputs or [])))


def _layer_list(layers: list[int] | str | None, n_layers: int) -> list[int]:
    if layers == "all":
        return list(range(n_layers))
    bad = [layer for layer in layers or [] if not 0 <= layer < n_layers]
    if bad:
        raise ConfigError(f"harvest.layers: the model has layers 0..{n_layers - 1}, not {bad[0]}")
    return list(layers or [])


def target_configs(cfg: TrainConfig, n_layers: int) -> list[tuple[str, TrainConfig]]:
    """``(name, single-dictionary config)`` for every dictionary of ``cfg`` (just ``cfg`` for one).

    Each config is what a one-dictionary run of that target would use: ``harvest.layer``/``harvest.site``
    set, ``output.dir`` and ``train.checkpoint_dir`` extended by the name, ``output.key`` filled in.

    Example:
        >>> from trainers.config import load_config
        >>> cfg = load_config(None, ["model.id=m", "harvest.layers=[1,2]", "harvest.sites=[resid_post,mlp_out]",
        ...                          "output.dir=out"])
        >>> [(name, c.harvest.layer, c.harvest.site, c.output.dir) for name, c in target_configs(cfg, 4)][:2]
        [('resid_post/layer_1', 1, 'resid_post', 'out/resid_post/layer_1'), ('mlp_out/layer_1', 1, 'mlp_out', 'out/mlp_out/layer_1')]
    """
    if not cfg.multi_target:
        return [("", cfg)]
    h = cfg.harvest
    layers = _layer_list(h.layers, n_layers) if h.layers is not None else [h.layer]
    if None in layers:
        raise ConfigError("harvest.sites lists several sites: set harvest.layer or harvest.layers too")
    out = []
    for layer in layers:
        for site in h.sites or [h.site]:
            raw = cfg.model_dump(mode="json")
            raw["harvest"].update(layer=layer, site=site, layers=None, sites=None)
            sub = TrainConfig.model_validate(raw)
            name = f"{sub.site_label}/layer_{layer}"
            sub.output.dir = _join(cfg.output.dir, name)
            if cfg.output.key:
                sub.output.key = cfg.output.key.format(layer=layer, site=sub.site_label)
            if cfg.train.checkpoint_dir:
                sub.train.checkpoint_dir = _join(cfg.train.checkpoint_dir, name)
            sub.train.progress = False  # the pipeline shows one line per dictionary instead
            out.append((name, sub))
    return out


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def site_spec(model: Any, cfg: TrainConfig) -> SiteSpec:
    """Hookpoints for the configured site(s) and layer(s) of ``model`` (every target's, for a run of several
    dictionaries: then ``inputs`` lists every hookpoint to harvest and ``outputs`` is None)."""
    adapter = adapter_for(model)
    if not cfg.multi_target:
        return _single_spec(adapter, cfg)
    specs = [t.spec for t in run_targets(model, cfg)]
    every = list(dict.fromkeys(h for spec in specs for h in spec.hookpoints))
    layers = sorted({layer for spec in specs for layer in spec.layers})
    return SiteSpec(layers, every, None, adapter.stop_hookpoint(every))


def run_targets(model: Any, cfg: TrainConfig) -> list[Target]:
    """The dictionaries of a run on ``model`` with their hookpoints."""
    adapter = adapter_for(model)
    return [Target(name, sub, _single_spec(adapter, sub)) for name, sub in target_configs(cfg, adapter.n_layers)]


def load_model(cfg: TrainConfig) -> tuple[Any, Any]:
    """``(model in eval mode, tokenizer)`` for ``cfg.model``: a local folder, a Hub id (HF cache), or a
    model scope-hub converts offline (``gemma-3-270m``; ``google/gemma-3-270m`` falls back to it when
    the Hub cache does not have it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scope_hub.gguf_models import load_causal_lm
    from scope_hub.model_resolution import load_error, resolve_model

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
    """Runs the model on windows and returns the kept rows of every hookpoint of ``spec``."""

    def __init__(self, model: Any, spec: SiteSpec, bos_id: int | None, exclude_bos: bool) -> None:
        self.model, self.spec, self.bos_id, self.exclude_bos = model, spec, bos_id, exclude_bos
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """One ``[n, width]`` tensor per hookpoint (keyed by its name), ``token_id``, ``sequence`` (0-based in
        this call) and ``position`` of the kept rows; :meth:`SiteSpec.stack` makes ``(x, target)`` of them."""
        hps = self.spec.hookpoints
        stopper = stop_after(self.model, self.spec.stop) if self.spec.stop is not None else nullcontext()
        with capture(self.model, hps) as acts, stopper:
            self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device), use_cache=False
            )
        keep = kept_positions(input_ids, attention_mask, self.bos_id, self.exclude_bos).to(self.device)
        rows = {str(h): acts[str(h)][keep].float().cpu() for h in hps}
        where = keep.cpu().nonzero()
        rows["sequence"] = where[:, 0].to(torch.int32)
        rows["position"] = where[:, 1].to(torch.int32)
        rows["token_id"] = input_ids[keep.cpu()].to(torch.int32)
        return rows


def shard_sequences(cfg: TrainConfig, spec: SiteSpec, context_size: int) -> int:
    """Windows per shard: about ``harvest.shard_tokens`` rows, divided among the hookpoints."""
    return max(1, -(-cfg.harvest.shard_tokens // (len(spec.hookpoints) * context_size)))


def harvest_fingerprint(cfg: TrainConfig, spec: SiteSpec, data: TokenSequences) -> str:
    """Identity of a harvest: same model, sites, data, choices and shard size -> same fingerprint."""
    ident = {
        "model": cfg.model.id,
        "revision": cfg.model.revision,
        "dtype": cfg.model.dtype,
        **spec.describe(),
        "data": data.sha256,
        "exclude_bos": cfg.data.exclude_bos,
        "storage": cfg.harvest.storage_dtype,
        "shard_sequences": shard_sequences(cfg, spec, data.input_ids.shape[1]),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def harvest_meta(cfg: TrainConfig, spec: SiteSpec, data: TokenSequences, revision: str | None = None) -> dict:
    """What ``harvest.json`` says about a harvest before its shards exist (labels checked by later runs)."""
    per_shard = shard_sequences(cfg, spec, data.input_ids.shape[1])
    return {
        "fingerprint": harvest_fingerprint(cfg, spec, data),
        "model": cfg.model.id,
        "model_revision": cfg.model.revision or revision,
        "site": cfg.harvest.site,
        "sites": list(cfg.harvest.sites or [cfg.harvest.site]),
        "site_out": cfg.site_out if spec.outputs else None,
        **spec.describe(),
        "hookpoints": [str(h) for h in spec.hookpoints],
        "n_layers": len(spec.inputs),
        "reconstructs_input": spec.outputs is None,
        "storage_dtype": cfg.harvest.storage_dtype,
        "exclude_bos": cfg.data.exclude_bos,
        "shard_sequences": per_shard,
        "n_shards": -(-len(data) // per_shard),
        "data": {
            "description": data.description,
            "sha256": data.sha256,
            "n_sequences": len(data),
            "context_size": data.input_ids.shape[1],
        },
    }


def harvest_to_disk(
    harvester: Harvester,
    data: TokenSequences,
    cfg: TrainConfig,
    root: str | Path,
    progress: bool | None = None,
    ctx: DistContext | None = None,
    revision: str | None = None,
    targets: list[Target] | None = None,
) -> str | Path:
    """Harvest every window of ``data`` into shards under ``root`` (a folder or fsspec URL).

    Every rank of ``ctx`` writes its share of the unfinished shards; rank 0 then lists them all in
    ``harvest.json``. A partial harvest (killed, any rank count) resumes with the shards it lacks.
    """
    ctx = ctx or DistContext()
    meta = harvest_meta(cfg, harvester.spec, data, revision)
    meta["model_layers"] = adapter_for(harvester.model).n_layers
    if cfg.multi_target:  # which hookpoints each dictionary reads, for runs that reuse the harvest
        meta["targets"] = [{"name": t.name, **t.spec.describe()} for t in targets or run_targets(harvester.model, cfg)]
    # each block ends with every rank waiting for the others; a rank that fails in one (a refused
    # fingerprint, a full disk, the model) stops them all there with its message
    with ctx.together():
        main_writer = ShardWriter(root, meta) if ctx.is_main else None  # checks the fingerprint, creates harvest.json
    with ctx.together():
        writer = main_writer or ShardWriter(root, meta, create=False)
        # every rank lists the finished shards before any rank writes a new one: the same split everywhere
        done = set() if writer.complete else set(writer.records())
    if writer.complete:
        return root
    todo = [i for i in range(meta["n_shards"]) if i not in done][ctx.rank :: ctx.world]
    per_shard, step = meta["shard_sequences"], cfg.harvest.batch_sequences
    show = (show_progress_by_default() if progress is None else progress) and ctx.is_main
    lines = ctx.is_main and progress is None and not show
    total = sum(min(per_shard, len(data) - i * per_shard) for i in todo)
    with (
        ctx.together(),
        tqdm(total=total, unit="seq", disable=not show, desc="harvest") as bar,
        PlainTicker("harvest", total, "seq", enabled=lines, world=ctx.world) as ticker,
    ):
        for index in todo:
            lo_shard, hi_shard = index * per_shard, min((index + 1) * per_shard, len(data))
            parts = []
            for lo in range(lo_shard, hi_shard, step):
                hi = min(lo + step, hi_shard)
                rows = harvester(data.input_ids[lo:hi], data.attention_mask[lo:hi])
                rows["sequence"] += lo
                parts.append(rows)
                bar.update(hi - lo)
                ticker.update(hi - lo)
            writer.write(index, {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, [lo_shard, hi_shard])
    with ctx.together():
        if ctx.is_main:
            writer.merge()
    return root
