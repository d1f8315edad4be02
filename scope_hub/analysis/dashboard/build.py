"""Build a feature dashboard from a corpus, a harvest cache, or arrays you already have.

Three inputs, one output (:func:`~scope_hub.analysis.dashboard.render.write_dashboard`):

* :func:`dashboard_from_texts`: run a ScopedModel over a text corpus (cut into token
  windows), features from the attached dictionary;
* :func:`dashboard_from_harvest`: read a trainers harvest folder (format
  ``scope-hub-harvest`` v2: ``harvest.json`` + ``shard_*.safetensors`` with one ``[n, width]`` tensor
  per hookpoint, ``token_id``, ``sequence``, ``position`` per kept row; v1 stored ``x [n, L, d_in]``;
  see ``trainers/harvest_shards.py``) and encode
  its activations with the dictionary — no model forward needed, the model is only used for
  logit effects. Read here with safetensors directly: ``scope_hub`` never imports ``trainers``;
* :func:`dashboard_from_arrays`: token ids ``[N, T]`` + features ``[N, T, F]``.

Example:
    >>> import tempfile
    >>> from scope_hub.scoped_model import ScopedModel
    >>> from scope_hub.testing.tiny_models import tiny_llama, tiny_tokenizer
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=8, site="resid_post", layer=1))
    >>> sm = ScopedModel.from_pretrained(tiny_llama(), dictionaries={"sae": sae})
    >>> index = dashboard_from_texts(sm, "sae", tiny_tokenizer(), ["Hello world.", "Good night."], tempfile.mkdtemp())
    >>> index.name, len(list(index.parent.glob("features/*.html")))
    ('index.html', 8)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from scope_hub.analysis.activations import iter_window_features, text_windows
from scope_hub.analysis.dashboard.collect import CollectedStats, FeatureCollector
from scope_hub.analysis.dashboard.effects import logit_effects, nearest_features
from scope_hub.analysis.dashboard.render import write_dashboard
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError, DictionaryNotFoundError
from scope_hub.scoped_model import ScopedModel

__all__ = ["dashboard_from_arrays", "dashboard_from_harvest", "dashboard_from_texts", "harvest_windows", "write_for"]

HARVEST_FORMAT = "scope-hub-harvest"


def write_for(
    out_dir: str | Path,
    stats: CollectedStats,
    dictionary: Dictionary,
    model: Any,
    tokenizer: Any,
    *,
    title: str,
    note: str = "",
    k: int = 10,
    **kwargs: Any,
) -> Path:
    """Add logit effects (when a model is given) and nearest features, then write the site."""
    effects = logit_effects(model, dictionary, k=k) if model is not None else None
    how = (
        "Logit effects: decoder row x final-norm gain through the unembedding (per-token 1/rms not modelled). "
        if effects is not None
        else ""
    )
    return write_dashboard(
        out_dir,
        stats,
        tokenizer,
        effects=effects,
        neighbors=nearest_features(dictionary, k=k),
        title=title,
        note=how + note,
        **kwargs,
    )


def dashboard_from_texts(
    scoped: ScopedModel,
    name: str,
    tokenizer: Any,
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    window: int = 64,
    batch_size: int = 8,
    top_k: int = 10,
    title: str | None = None,
    exclude_bos: bool = True,
    **kwargs: Any,
) -> Path:
    """Dashboard of attached dictionary ``name`` over ``texts``; returns the path of ``index.html``.

    ``exclude_bos``: leave the BOS position out of every statistic (it is still read by the model).
    BOS residuals are norm outliers (Gemma's especially), so features that fire on them would
    otherwise show BOS as their top context everywhere — the same choice as trainers' harvests.
    """
    ids, mask = text_windows(tokenizer, texts, window)
    counted = mask.bool()
    if exclude_bos and tokenizer.bos_token_id is not None:
        counted = counted & (ids != tokenizer.bos_token_id)
    dictionary = scoped.dictionaries[name]
    collector = FeatureCollector(dictionary.d_sae, top_k)
    for rows, feats in iter_window_features(scoped, name, ids, mask, batch_size):
        collector.update(ids[rows], feats, counted[rows])
    bos_note = ", BOS not counted" if exclude_bos else ""
    note = f"Corpus: {len(texts)} texts in {len(ids)} windows of {window} tokens{bos_note}."
    return write_for(
        out_dir,
        collector.result(),
        dictionary,
        scoped.model,
        tokenizer,
        title=title or f"{name}: feature dashboard",
        note=note,
        k=top_k,
        **kwargs,
    )


def dashboard_from_arrays(
    token_ids: torch.Tensor,
    features: torch.Tensor,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    dictionary: Dictionary | None = None,
    model: Any = None,
    mask: torch.Tensor | None = None,
    top_k: int = 10,
    title: str = "Feature dashboard",
    **kwargs: Any,
) -> Path:
    """Dashboard from token ids [N, T] and features [N, T, F]; logit effects need ``dictionary`` and ``model``."""
    collector = FeatureCollector(features.shape[-1], top_k)
    for start in range(0, len(token_ids), 64):
        rows = slice(start, start + 64)
        collector.update(token_ids[rows], features[rows], None if mask is None else mask[rows])
    if dictionary is None:
        return write_dashboard(out_dir, collector.result(), tokenizer, title=title, **kwargs)
    return write_for(out_dir, collector.result(), dictionary, model, tokenizer, title=title, k=top_k, **kwargs)


def harvest_windows(
    root: str | Path, layer_index: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per shard of a harvest: ``(token ids [W, T], activations [W, T, d_in], mask [W, T])``.

    Rows are scattered back into their windows by ``sequence`` and ``position``; positions
    the harvest dropped (BOS, padding) are masked. ``layer_index`` picks one of the input
    hookpoints (``hookpoints_in``; v1: one of ``x``'s layers).
    """
    from safetensors.torch import load_file

    root = Path(root)
    meta_file = root / "harvest.json"
    if not meta_file.is_file():
        raise DictionaryNotFoundError(f"{root}: no harvest.json; not a {HARVEST_FORMAT} folder")
    meta = json.loads(meta_file.read_text())
    version = int(meta.get("version", 0))
    if meta.get("format") != HARVEST_FORMAT or version > 2:
        raise ConfigError(
            f"{root}: harvest format {meta.get('format')!r} v{meta.get('version')} is not {HARVEST_FORMAT} v1 or v2"
        )
    hookpoint = meta["hookpoints_in"][layer_index] if version == 2 else None
    for shard in meta["shards"]:
        tensors = load_file(str(root / shard["file"]))
        if hookpoint is not None:  # v2: one [n, width] tensor per hookpoint
            tensors["x"] = tensors[hookpoint].unsqueeze(1)
        seq, pos = tensors["sequence"].long(), tensors["position"].long()
        first = int(seq.min())
        rows, length = seq - first, int(pos.max()) + 1
        ids = torch.zeros(int(rows.max()) + 1, length, dtype=torch.long)
        acts = torch.zeros(*ids.shape, tensors["x"].shape[-1])
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        ids[rows, pos] = tensors["token_id"].long()
        acts[rows, pos] = tensors["x"][:, 0 if hookpoint else layer_index].float()
        mask[rows, pos] = True
        yield ids, acts, mask


def dashboard_from_harvest(
    root: str | Path,
    dictionary: Dictionary,
    tokenizer: Any,
    out_dir: str | Path,
    *,
    model: Any = None,
    top_k: int = 10,
    batch_size: int = 16,
    title: str = "Feature dashboard (harvest)",
    **kwargs: Any,
) -> Path:
    """Dashboard from a harvest folder: features = ``dictionary.encode(x)`` of its stored activations."""
    collector = FeatureCollector(dictionary.d_sae, top_k)
    windows = 0
    with torch.no_grad():
        for ids, acts, mask in harvest_windows(root):
            windows += len(ids)
            for start in range(0, len(ids), batch_size):
                rows = slice(start, start + batch_size)
                feats = dictionary.encode(acts[rows].to(dictionary.w_enc.dtype)).float()
                collector.update(ids[rows], feats, mask[rows])
    note = f"Harvest: {root} ({windows} windows)."
    return write_for(
        out_dir, collector.result(), dictionary, model, tokenizer, title=title, note=note, k=top_k, **kwargs
    )
