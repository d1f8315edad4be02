"""Loss terms: reconstruction (with Matryoshka prefixes), sparsity penalties, aux-k.

Conventions (all per token, averaged over tokens and layers):

* reconstruction: ``||y - t||^2`` summed over the output width, averaged over
  Matryoshka prefixes (one prefix = the whole dictionary without Matryoshka);
* JumpReLU: quadratic L0 penalty ``lam * (2 / L0*) * (L0 - L0*)^2`` with L0 each
  token's L0 (averaged over tokens; the form SAELens 6.54 implements as Gemma
  Scope 2's ``quadratic`` mode) or the batch-mean L0 (``batch_mean``),
  differentiable through the straight-through estimator of the step function;
* ReLU: ``lam * sum_i f_i * ||w_dec_i||`` (L1 weighted by decoder norms);
* aux-k (TopK/BatchTopK, Gao et al. 2024): the ``k_aux`` largest *dead*
  latents reconstruct the detached residual; normalised by the residual's variance;
* pre-activation loss (JumpReLU/ReLU, Anthropic 2025, SAELens ``pre_act_loss_coefficient``):
  ``sum_i relu(theta_i - pre_i) * ||w_dec_i||`` over *dead* latents, which pulls their
  pre-activations up to the threshold so that they fire again.

Example:
    >>> import torch
    >>> t = torch.ones(4, 1, 3); y = torch.zeros(4, 1, 3)
    >>> float(reconstruction_loss([y], t)), float(fvu(y, t + torch.randn(4, 1, 3)) > 0)
    (3.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainers.forward import LayerCode, LayerParams
from trainers.kernels import Selection, gather_pre, sparse_decode

PRE_ACT_COEFFICIENT = 1.0
"""Weight of the pre-activation loss when ``loss.pre_act_coefficient`` is unset (JumpReLU)."""


def reconstruction_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """Mean over prefixes of the per-token squared error (summed over width, averaged over layers)."""
    n_layers = target.shape[1]
    losses = [(y - target).pow(2).sum(dim=(1, 2)).mean() / n_layers for y in outputs]
    return torch.stack(losses).mean()


def fvu(y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained over the batch: ``sum ||t - y||^2 / sum ||t - mean(t)||^2``."""
    y, target = y.detach(), target.detach()
    residual = (target - y).pow(2).sum()
    return residual / (target - target.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)


def l0_penalty(
    codes: list[LayerCode],
    target_l0: float,
    coefficient: float,
    mode: str,
    global_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Quadratic L0 penalty ``coefficient * (2 / L0*) * (L0 - L0*)^2``, averaged over layers.

    ``batch_mean`` uses the batch's mean L0. Under data parallelism the batch is
    split over ranks; ``global_mean`` averages the (detached) L0 over ranks and
    the gradient is taken through the local L0 at the global value, so the
    averaged gradients equal the single-process gradient exactly.
    """
    scale = coefficient * 2.0 / target_l0
    terms = []
    for code in codes:
        if mode == "per_token":
            terms.append(scale * (code.l0_tokens - target_l0).pow(2).mean())
            continue
        local = code.l0_tokens.mean()
        overall = global_mean(local.detach()) if global_mean is not None else local.detach()
        value = scale * (overall - target_l0) ** 2
        surrogate = 2 * scale * (overall - target_l0) * local  # d value / d local at the global L0
        terms.append(surrogate - surrogate.detach() + value)
    return torch.stack(terms).mean()


def l1_penalty(codes: list[LayerCode], params: list[LayerParams], coefficient: float) -> torch.Tensor:
    """``coefficient * mean_tokens sum_i f_i ||w_dec_i||``, averaged over layers."""
    terms = []
    for code, lp in zip(codes, params):
        norms = lp.w_dec_flat().norm(dim=1)
        batch = code.pre.shape[0]
        if code.sel is None:
            terms.append((code.f.float() @ norms).sum() / batch)  # f is bf16 under train.dtype=bfloat16
        else:
            terms.append((code.f * norms.index_select(0, code.sel.cols)).sum() / batch)
    return coefficient * torch.stack(terms).mean()


def _selection(cols: torch.Tensor, values: torch.Tensor, d_sae: int) -> Selection:
    """A fixed-count-per-row selection from ``[rows, k]`` column indices and values."""
    n_rows, k = cols.shape
    rows = torch.arange(n_rows, device=cols.device).repeat_interleave(k)
    offsets = torch.arange(0, n_rows * k, k, device=cols.device)
    return Selection(rows, cols.reshape(-1), offsets, values.reshape(-1), n_rows, d_sae)


def aux_k_loss(
    codes: list[LayerCode],
    params: list[LayerParams],
    x: torch.Tensor,
    residual: torch.Tensor,
    dead: torch.Tensor,
    k_aux: int,
    global_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Reconstruct the detached ``residual`` [batch, L, d_out] with the top-``k_aux`` dead latents.

    Returns None when no latent is dead. ``dead`` is bool ``[L, d_sae]``. The
    normaliser is the residual's variance over the global batch (:func:`residual_variance`).
    """
    if not bool(dead.any()):
        return None
    batch, n_layers, d_out = residual.shape
    estimate = torch.zeros_like(residual)
    for i, (code, lp) in enumerate(zip(codes, params)):
        dead_cols = dead[i].nonzero().squeeze(1).to(x.device)
        if dead_cols.numel() == 0:
            continue
        with torch.no_grad():  # top-k over the dead columns only (a gather, not a masked copy of all of them)
            values, slots = code.pre.index_select(1, dead_cols).topk(
                min(k_aux, dead_cols.numel()), dim=-1, sorted=False
            )
            sel = _selection(dead_cols[slots], values, lp.d_sae)
        activation = torch.relu(gather_pre(sel, x[:, i], lp.w_enc, lp.b_enc))
        block = sparse_decode(activation, sel, lp.w_dec_flat()).view(batch, n_layers - i, d_out)
        estimate = estimate + torch.nn.functional.pad(block, (0, 0, i, 0))
    error = (estimate - residual).pow(2).sum()
    return error / residual_variance(residual, global_mean).clamp_min(1e-12)


def residual_variance(
    residual: torch.Tensor, global_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """``sum ||r - mean(r)||^2`` over the batch; with ``global_mean`` (data parallelism) the global
    batch's value divided by the ranks, taken about the *global* mean (local means would miss the
    spread between the ranks' slices).

    Example:
        >>> r = torch.tensor([[[1.0]], [[3.0]]])
        >>> float(residual_variance(r))
        2.0
    """
    if global_mean is None:
        return (residual - residual.mean(0, keepdim=True)).pow(2).sum()
    flat = residual.reshape(residual.shape[0], -1).double()
    sums = global_mean(torch.cat([flat.sum(0), flat.pow(2).sum().view(1)]))
    return (sums[-1] - sums[:-1].pow(2).sum() / residual.shape[0]).to(residual.dtype)


def pre_act_loss(params: list[LayerParams], x: torch.Tensor, dead: torch.Tensor) -> torch.Tensor | None:
    """Mean over tokens of ``sum_{i dead} relu(theta_i - pre_i) * ||w_dec_i||``, averaged over layers.

    A dead JumpReLU latent gets no gradient from the reconstruction (it never fires) and none
    from the straight-through estimator (its pre-activations are far below the threshold), so
    without this term it stays dead. Returns None when no latent is dead. ``dead`` is bool
    ``[L, d_sae]``; ``x`` ``[batch, L, d_in]``.

    Example:
        >>> from trainers.forward import LayerParams
        >>> w_enc = torch.zeros(2, 3, requires_grad=True); b_enc = torch.zeros(3, requires_grad=True)
        >>> lp = LayerParams(w_enc, b_enc, torch.full((3,), 0.5), torch.eye(3), torch.zeros(3), None)
        >>> dead = torch.tensor([[True, False, False]])
        >>> loss = pre_act_loss([lp], torch.ones(4, 1, 2), dead); loss.backward()
        >>> float(loss.detach()), b_enc.grad.tolist()   # only the dead latent is pulled up
        (0.5, [-1.0, 0.0, 0.0])
    """
    terms = []
    for i, lp in enumerate(params):
        cols = dead[i].nonzero().squeeze(1).to(x.device)
        if cols.numel() == 0 or lp.threshold is None:
            continue
        pre = x[:, i] @ lp.w_enc.index_select(1, cols) + lp.b_enc.index_select(0, cols)
        gap = (lp.threshold.index_select(0, cols) - pre).relu()
        norms = lp.w_dec_flat().index_select(0, cols).norm(dim=1)
        terms.append((gap * norms).sum(1).mean())
    if not terms:
        return None
    return torch.stack(terms).sum() / len(params)
