"""Dead-latent resampling for ReLU/JumpReLU dictionaries (TopK kinds use the aux-k loss instead).

A dead latent is re-initialised toward an input the dictionary reconstructs
badly (drawn with probability proportional to its squared error, as in
Anthropic's 2023 recipe): its decoder row becomes that token's normalised
residual, its encoder column the token's normalised input scaled to a fifth of
the mean live encoder norm, its bias 0, and its Adam moments are zeroed. A
JumpReLU latent takes the median threshold of the live latents, not the initial
one: at ~0.001 it would fire on about half of all tokens (any positive
pre-activation) and every resampling would push L0 far above its target. Every rank computes the same update from the same
global batch and generator, so parameters stay identical.
"""

from __future__ import annotations

import torch

from scope_hub.dictionaries import Dictionary
from trainers.forward import LayerParams, SparsitySpec, forward


@torch.no_grad()
def resample_dead(
    dictionary: Dictionary,
    params: list[LayerParams],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    t: torch.Tensor,
    dead: torch.Tensor,
    spec: SparsitySpec,
    gen: torch.Generator,
    threshold_init: float,
) -> torch.Tensor:
    """Re-initialise the latents marked in ``dead`` [L, d_sae]; returns the mask of those changed."""
    if not bool(dead.any()):
        return dead
    residual = t - forward(params, x, spec, sparse=False).outputs[-1]
    for i, lp in enumerate(params):
        idx = dead[i].nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        errors = residual[:, i:].pow(2).sum(dim=(1, 2))
        rows = torch.multinomial(errors.clamp_min(1e-12).cpu(), idx.numel(), replacement=True, generator=gen)
        rows = rows.to(x.device)
        direction = residual[rows, i:].reshape(idx.numel(), -1)
        lp.w_dec_flat()[idx] = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        live = ~dead[i]
        scale = lp.w_enc[:, live].norm(dim=0).mean() if bool(live.any()) else torch.tensor(1.0)
        inputs = x[rows, i]
        lp.w_enc[:, idx] = (inputs / inputs.norm(dim=1, keepdim=True).clamp_min(1e-12) * 0.2 * scale).T
        lp.b_enc[idx] = 0.0
        if lp.threshold is not None:
            # threshold_init only when no latent is alive to take a typical threshold from
            lp.threshold[idx] = lp.threshold[live].median() if bool(live.any()) else threshold_init
        _zero_moments(optimizer, lp, idx)
    return dead.clone()


def _zero_moments(optimizer: torch.optim.Optimizer, lp: LayerParams, idx: torch.Tensor) -> None:
    for param, axis in ((lp.w_enc, 1), (lp.w_dec, 0), (lp.b_enc, 0), (lp.threshold, 0)):
        if param is None:
            continue
        for _key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                value.index_fill_(axis, idx, 0.0)
