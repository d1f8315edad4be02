"""Input/target normalisation: scale activations to unit mean norm, then fold the scale into the weights.

Training sees ``x * s_in`` and ``t * s_out`` with ``s = 1 / mean ||a||`` per layer,
estimated on the first training tokens (the same on every rank). The dictionary's
math then gives, for raw inputs, ``pre = (x s_in) @ w_enc + b_enc`` and
``y = (f @ w_dec + b_dec) / s_out``. Folding scales the features by ``c = 1 / s_out``
(``w_enc * s_in c``, ``b_enc * c``, ``threshold * c``, ``b_dec c``, ``skip * s_in c``),
which leaves ``w_dec`` as trained: unit-norm rows, features in the model's units.
Unfolded, the factors are stored as ``Normalization(kind="constant_scale")``.

Example:
    >>> import torch
    >>> from scope_hub.dictionaries import SAE
    >>> from scope_hub.metadata import DictionaryConfig, Normalization
    >>> sae = SAE(DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=8,
    ...           normalization=Normalization(kind="constant_scale", scale_in=0.5, scale_out=0.5)))
    >>> _ = [torch.nn.init.normal_(p) for p in sae.parameters()]
    >>> x = torch.randn(3, 4); before = sae(x)
    >>> fold_normalization(sae, [0.5], [0.5])
    >>> sae.config.normalization.kind, torch.allclose(sae(x), before, atol=1e-5)
    ('none', True)
"""

from __future__ import annotations

import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.metadata import Normalization
from trainers.forward import layer_params
from trainers.sources import ActivationSource


def estimate_scales(
    source: ActivationSource, tokens: int, batch_size: int, shared: bool = False, max_batches: int | None = None
) -> tuple[list[float], list[float]]:
    """``(s_in, s_out)`` per layer: 1 / mean norm over the first ``tokens`` training rows
    (at most ``max_batches`` batches: the run's own, so streaming never reads past them).

    ``shared`` uses one factor for all layers (needed to store unfolded CLT scales).
    """
    n_batches = max(1, min(-(-tokens // batch_size), max_batches or 1 << 62))
    norms_in, norms_out = [], []
    for step in range(n_batches):
        x, t = source.batch(step, batch_size)
        norms_in.append(x.double().norm(dim=-1))
        norms_out.append(t.double().norm(dim=-1))
    mean_in = torch.cat(norms_in).mean(0)
    mean_out = torch.cat(norms_out).mean(0)
    if shared:
        mean_in = mean_in.mean().expand_as(mean_in)
        mean_out = mean_out.mean().expand_as(mean_out)
    return (1.0 / mean_in.clamp_min(1e-12)).tolist(), (1.0 / mean_out.clamp_min(1e-12)).tolist()


@torch.no_grad()
def fold_normalization(dictionary: Dictionary, scale_in: list[float], scale_out: list[float]) -> None:
    """Fold per-layer factors into the weights and mark the dictionary as reading raw activations.

    Features of source layer ``i`` are rescaled by ``c_i = 1 / s_out[i]`` so that decoder rows keep
    the norm training gave them (unit, by default) and activations come out in the units of the
    model's own activations, as Gemma Scope publishes them: steering by ``alpha`` then adds ``alpha``
    residual-stream units, and thresholds read as activation sizes. TopK selections are unchanged
    (positive scaling); a CLT's decoder from layer ``i`` to layer ``j`` takes ``s_out[i] / s_out[j]``.
    """
    params = layer_params(dictionary)
    for i, lp in enumerate(params):
        c = 1.0 / scale_out[i]
        lp.w_enc.mul_(scale_in[i] * c)
        lp.b_enc.mul_(c)
        if lp.threshold is not None:
            lp.threshold.mul_(c)
        w = lp.w_dec.view(lp.w_dec.shape[0], -1, lp.w_dec.shape[-1])  # [d_sae, L - i, d_out]
        w.mul_(torch.tensor([scale_out[i] / s for s in scale_out[i:]], dtype=w.dtype, device=w.device).view(1, -1, 1))
        lp.b_dec.div_(scale_out[i])
        if lp.skip is not None:
            lp.skip.mul_(scale_in[i] / scale_out[i])
    dictionary.config.normalization = Normalization()


def normalization_metadata(scale_in: list[float], scale_out: list[float]) -> Normalization:
    """The metadata entry for unfolded factors (they must be shared by all layers)."""
    if len(set(scale_in)) > 1 or len(set(scale_out)) > 1:
        raise ValueError("per-layer normalisation factors differ; fold them (output.fold_normalization=true)")
    return Normalization(kind="constant_scale", scale_in=scale_in[0], scale_out=scale_out[0])
