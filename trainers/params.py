"""Building a fresh dictionary to train, initialising it, and keeping its constraints.

* Decoder rows (per latent, flattened over output layers for CLTs) start at
  unit norm; SAE encoders start as the decoder's transpose (tied init); a
  transcoder's decoder row starts as the output its encoder column predicts
  linearly (:func:`input_output_covariance`), the transcoder's analogue of tying.
* After each step decoder rows go back to unit norm and JumpReLU thresholds
  stay non-negative.

Example:
    >>> import torch
    >>> from trainers.config import load_config
    >>> cfg = load_config(None, ["synthetic.d_in=8", "dictionary.d_sae=16", "dictionary.architecture=relu"])
    >>> d = build_dictionary(cfg, d_in=8, d_out=8, n_layers=1)
    >>> init_dictionary(d, cfg, torch.Generator().manual_seed(0))
    >>> round(float(d.w_dec.detach().norm(dim=1).mean()), 4), torch.equal(d.w_enc, d.w_dec.T)
    (1.0, True)
"""

from __future__ import annotations

import torch

from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.kinds import architecture, kind
from scope_hub.metadata import DictionaryConfig
from trainers.config import TrainConfig
from trainers.forward import LayerParams, layer_params


def dictionary_config(cfg: TrainConfig, *, d_in: int, d_out: int, n_layers: int) -> DictionaryConfig:
    """The :class:`DictionaryConfig` the run trains (metadata filled in later)."""
    d = cfg.dictionary
    layers = cfg.harvest.layers if cfg.harvest.layers != "all" else list(range(n_layers))
    layers = layers or (list(range(n_layers)) if kind(d.type).per_layer_decoders else None)
    return DictionaryConfig(
        type=d.type,
        architecture=d.architecture,
        d_in=d_in,
        d_sae=d.d_sae,
        d_out=d_out,
        k=d.k if architecture(d.architecture).needs_k else None,  # e.g. a k inherited from a TopK config
        layers=layers if kind(d.type).per_layer_decoders else None,
        layer=cfg.harvest.layer if not kind(d.type).per_layer_decoders else None,
        affine_skip=d.affine_skip if kind(d.type).affine_skip == "optional" else kind(d.type).affine_skip == "always",
        l0_target=d.l0_target if architecture(d.architecture).trains_threshold else (float(d.k) if d.k else None),
        matryoshka_groups=d.matryoshka_groups,
        model=cfg.model.id,
        model_revision=cfg.model.revision,
        site=cfg.harvest.site if cfg.model.id else None,
        site_out=cfg.site_out if cfg.model.id and not kind(d.type).reconstructs_input else None,
        variant=d.variant,
    )


def build_dictionary(
    cfg: TrainConfig,
    *,
    d_in: int,
    d_out: int,
    n_layers: int,
    device: str | torch.device = "cpu",
    latents: tuple[int, int] | None = None,
) -> Dictionary:
    """An uninitialised dictionary of the configured kind (:func:`init_dictionary` fills every parameter).

    ``latents=(lo, hi)`` builds only that slice of the latents (a latent-parallel shard).
    ``skip_init`` skips the core's default initialisation: it neither costs time nor draws from
    the global RNG the run seeded.
    """
    config = dictionary_config(cfg, d_in=d_in, d_out=d_out, n_layers=n_layers)
    if latents is not None:
        config = config.model_copy(update={"d_sae": latents[1] - latents[0]})
    return torch.nn.utils.skip_init(KINDS[config.type], config, device=device, dtype=torch.float32)


RANDN_BLOCK = 16
"""torch's CPU normal sampler fills blocks of 16 values (the last 16 redrawn): streams split into pieces
of whole blocks, the last piece holding at least one block, draw the same numbers as one call."""


def randn_rows(
    shape: tuple[int, ...], gen: torch.Generator, rows: tuple[int, int] | None, chunk: int = 1 << 14
) -> torch.Tensor:
    """Rows ``[lo, hi)`` of ``torch.randn(shape, generator=gen)`` without materialising the other rows.

    The whole stream is drawn (the generator ends where one call would leave it), one chunk
    of rows at a time.

    Example:
        >>> full = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> part = randn_rows((100, 3), torch.Generator().manual_seed(0), (40, 60), chunk=16)
        >>> torch.equal(part, full[40:60])
        True
    """
    if rows is None:
        return torch.randn(shape, generator=gen)
    n, row_numel = shape[0], int(torch.Size(shape[1:]).numel())
    lo, hi = rows
    step = max(RANDN_BLOCK, chunk // RANDN_BLOCK * RANDN_BLOCK)  # whole blocks whatever the row width
    out, start = torch.empty((hi - lo, *shape[1:])), 0
    while start < n:
        stop = min(n, start + step)
        if (n - stop) * row_numel < RANDN_BLOCK:  # a short tail joins this piece
            stop = n
        piece = torch.randn((stop - start, *shape[1:]), generator=gen)
        a, b = max(start, lo), min(stop, hi)
        if a < b:
            out[a - lo : b - lo] = piece[a - start : b - start]
        start = stop
    return out


def input_output_covariance(x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    """Per layer i, the covariance ``[d_in, (L - i) * d_out]`` of input i with the outputs layer i writes.

    ``x`` ``[batch, L, d_in]``, ``t`` ``[batch, L, d_out]``. A latent that reads direction ``w``
    of the input is best decoded, to first order, along ``w @ C``: the output that moves with
    ``x @ w`` (for an SAE on whitened inputs that is ``w`` itself, the tied init).

    Example:
        >>> x = torch.tensor([[[1.0]], [[3.0]]]); t = torch.tensor([[[2.0, 0.0]], [[6.0, 1.0]]])
        >>> [c.tolist() for c in input_output_covariance(x, t)]
        [[[4.0, 1.0]]]
    """
    batch, n_layers = x.shape[0], x.shape[1]
    xc, tc = x - x.mean(0, keepdim=True), t - t.mean(0, keepdim=True)
    return [xc[:, i].T @ tc[:, i:].reshape(batch, -1) / max(1, batch - 1) for i in range(n_layers)]


@torch.no_grad()
def init_dictionary(
    dictionary: Dictionary,
    cfg: TrainConfig,
    gen: torch.Generator,
    b_dec: torch.Tensor | None = None,
    latents: tuple[int, int] | None = None,
    x_mean: torch.Tensor | None = None,
    covariance: list[torch.Tensor] | None = None,
) -> None:
    """Initialise every parameter (``b_dec`` [L, d_out]: e.g. the mean target; zeros when None).

    ``latents=(lo, hi)``: ``dictionary`` is that slice of a ``cfg.dictionary.d_sae`` dictionary
    (:func:`build_dictionary`) and gets exactly the values the full one would.

    ``x_mean`` [L, d_in], the mean input, centres the pre-activations: ``b_enc = -x_mean @ w_enc``, as
    subtracting ``b_dec`` from the input before encoding does at initialisation (Gao et al. 2024, SAELens).
    Residual streams have a large mean; without this, every latent whose random direction points away
    from it starts with negative pre-activations on all tokens, never fires, and gets no gradient (not
    even from aux-k, whose activations are ReLU'd): measured 30% dead latents on the quick demo's SAE.

    ``covariance`` (:func:`input_output_covariance` of a batch) starts a transcoder's decoder row at
    ``normalise(w_enc[:, j] @ C)``, the output its encoder direction predicts, instead of a random
    direction (or, with ``d_in == d_out``, the encoder's transpose: an input direction, meaningless as
    an output). With an unrelated decoder a latent's first gradients push its encoder away from the
    tokens it fires on (its output does not match their target) and it dies before its decoder has
    moved: measured on the quick demo's transcoder, 40.3% dead at FVU 0.255 with the transposed encoder,
    2.3% dead at FVU 0.219 with this init.
    """
    arch, d_sae = cfg.dictionary.architecture, cfg.dictionary.d_sae
    reconstructs = kind(cfg.dictionary.type).reconstructs_input
    for i, lp in enumerate(layer_params(dictionary)):
        w_dec = randn_rows((d_sae, *lp.w_dec.shape[1:]), gen, latents)
        flat = w_dec.view(w_dec.shape[0], -1)
        flat /= flat.norm(dim=1, keepdim=True)
        lp.w_dec.copy_(w_dec)
        if reconstructs:
            lp.w_enc.copy_(lp.w_dec.T)
        else:
            w_enc = randn_rows((d_sae, lp.w_enc.shape[0]), gen, latents)
            lp.w_enc.copy_((w_enc / w_enc.norm(dim=1, keepdim=True)).T)
            if covariance is not None:
                predicted = lp.w_enc.T @ covariance[i].to(lp.w_enc)
                lp.w_dec_flat().copy_(predicted / predicted.norm(dim=1, keepdim=True).clamp_min(1e-12))
        if x_mean is not None:
            lp.b_enc.copy_(-(x_mean[i].to(lp.w_enc) @ lp.w_enc))
        else:
            lp.b_enc.zero_()
        lp.b_dec.copy_(b_dec[i] if b_dec is not None else torch.zeros_like(lp.b_dec))
        if lp.threshold is not None:
            lp.threshold.fill_(cfg.loss.threshold_init if architecture(arch).trains_threshold else 0.0)
        if lp.skip is not None:
            lp.skip.zero_()


def trainable_parameters(dictionary: Dictionary) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters the optimizer updates (BatchTopK's threshold is estimated, not learned)."""
    out = []
    for name, param in dictionary.named_parameters():
        learned = not name.endswith("threshold") or architecture(dictionary.config.architecture).trains_threshold
        param.requires_grad_(learned)
        if learned:
            out.append((name, param))
    return out


@torch.no_grad()
def remove_parallel_grads(params: list[LayerParams]) -> None:
    """Drop the decoder-gradient component along each (unit) row: it would only change the norm."""
    for lp in params:
        grad = lp.w_dec.grad
        if grad is None:
            continue
        w, g = lp.w_dec_flat(), grad.view(grad.shape[0], -1)
        dots = torch.bmm(g.unsqueeze(1), w.unsqueeze(2)).view(-1, 1)  # row-wise dot, no [d_sae, d] temporary
        g.addcmul_(w, dots, value=-1.0)


@torch.no_grad()
def apply_constraints(params: list[LayerParams], *, unit_decoder: bool, clamp_threshold: bool) -> None:
    """Renormalise decoder rows; keep JumpReLU thresholds >= 0."""
    for lp in params:
        if unit_decoder:
            w = lp.w_dec_flat()
            w.div_(torch.linalg.vector_norm(w, dim=1, keepdim=True).clamp_min(1e-12))
        if clamp_threshold and lp.threshold is not None:
            lp.threshold.clamp_min_(0.0)
