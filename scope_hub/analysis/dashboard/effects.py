"""Per-feature logit effects through the unembedding, and nearest features by decoder cosine.

Logit effect of feature ``i`` = ``(w_dec[i] * gain) @ W_U.T``: its decoder row in residual
space, scaled elementwise by the final norm's gain, through the unembedding. What is
done and what is not:

* **gain**: for RMSNorm-style final norms (Llama ``weight``, Gemma ``1 + weight``) the gain
  is read as ``norm(ones)`` — RMS of a vector of ones is 1, so this returns the effective
  per-dimension scale whatever the parametrisation (up to ``1/sqrt(1 + eps)``). For
  LayerNorm (GPT-2, GPT-NeoX) rows are mean-centred first, then scaled by ``weight``.
* **not modelled**: the per-token ``1/rms(x)`` factor (it rescales all logits of a token
  alike, so the ranking of tokens is unaffected), norm biases, Gemma's final logit
  soft-capping (monotone), and any later layer's processing of the direction;
* **sites**: decoders writing the residual width (resid_*, mlp_out, transcoders) are used
  as they are; ``attn_out`` decoders (pre-``o_proj``, heads x head_dim wide) are mapped
  through ``o_proj`` first (Gemma's post-attention norm after ``o_proj`` is not modelled).

Example:
    >>> from scope_hub.testing.tiny_models import tiny_llama
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> sae = make_dictionary(make_config("sae", "relu", d_in=64, d_sae=8, site="resid_post", layer=1))
    >>> effects = logit_effects(tiny_llama(), sae, k=3)
    >>> effects.top_ids.shape, bool((effects.top_values[:, 0] >= effects.top_values[:, 1]).all())
    (torch.Size([8, 3]), True)
    >>> nearest_features(sae, k=2)[0].shape
    torch.Size([8, 2])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from scope_hub.analysis.attribution import decoder_directions
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ShapeMismatchError
from scope_hub.hookpoints import adapter_for

__all__ = ["LogitEffects", "final_norm_gain", "logit_effects", "nearest_features", "residual_directions"]


@dataclass
class LogitEffects:
    """Top positive and negative logit effects per feature."""

    top_ids: torch.Tensor
    """[F, k] token ids with the largest effect, descending."""
    top_values: torch.Tensor
    bottom_ids: torch.Tensor
    """[F, k] token ids with the most negative effect, most negative first."""
    bottom_values: torch.Tensor


def residual_directions(model: Any, dictionary: Dictionary) -> torch.Tensor:
    """[F, d_model] each feature's decoder row in residual-stream units."""
    rows = decoder_directions(dictionary)
    adapter = adapter_for(model)
    if rows.shape[1] == adapter.d_model:
        return rows
    config = dictionary.config
    site = config.site_out or config.site
    if site == "attn_out" and config.layer is not None:
        o_proj = model.get_submodule(adapter.hookpoint("attn_out", config.layer).module)
        return rows @ o_proj.weight.detach().float().T
    raise ShapeMismatchError(
        f"decoder width {rows.shape[1]} is neither the residual width {adapter.d_model} nor attn_out"
    )


def final_norm_gain(model: Any) -> tuple[torch.Tensor, bool]:
    """``(gain [d_model], centre)``: the final norm's per-dimension scale, and whether it centres (LayerNorm)."""
    adapter = adapter_for(model)
    norm = model.get_submodule(adapter.final_norm_path)
    if isinstance(norm, torch.nn.LayerNorm):
        weight = norm.weight if norm.weight is not None else torch.ones(adapter.d_model)
        return weight.detach().float(), True
    param = next(norm.parameters(), None)
    ones = torch.ones(
        1,
        adapter.d_model,
        dtype=param.dtype if param is not None else torch.float32,
        device=param.device if param is not None else "cpu",
    )
    with torch.no_grad():
        return norm(ones)[0].float(), False


def logit_effects(model: Any, dictionary: Dictionary, k: int = 10, chunk: int = 256) -> LogitEffects:
    """Top-``k`` positive and negative logit effects of every feature (chunked: vocabularies are large)."""
    rows = residual_directions(model, dictionary)
    gain, centre = final_norm_gain(model)
    if centre:
        rows = rows - rows.mean(-1, keepdim=True)
    rows = rows * gain.to(rows.device)
    unembed = model.get_output_embeddings().weight.detach().float()
    parts = []
    with torch.no_grad():
        for start in range(0, len(rows), chunk):
            logits = rows[start : start + chunk].to(unembed.device) @ unembed.T
            top, bottom = logits.topk(k, dim=1), logits.topk(k, dim=1, largest=False)
            parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return LogitEffects(*(torch.cat([p[i] for p in parts]).cpu() for i in range(4)))


def nearest_features(dictionary: Dictionary, k: int = 10, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [F, k], cosines [F, k])``: each feature's nearest other features by decoder cosine."""
    rows = decoder_directions(dictionary)
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    k = min(k, len(unit) - 1)
    ids, values = [], []
    with torch.no_grad():
        for start in range(0, len(unit), chunk):
            cos = unit[start : start + chunk] @ unit.T
            cos[torch.arange(len(cos)), torch.arange(start, start + len(cos))] = -2.0  # not yourself
            top = cos.topk(k, dim=1)
            ids.append(top.indices)
            values.append(top.values)
    return torch.cat(ids), torch.cat(values)
