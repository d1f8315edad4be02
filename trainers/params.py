"""Building a fresh dictionary to train, initialising it, and keeping its constraints.

* Decoder rows (per latent, flattened over output layers for CLTs) start at
  unit norm; SAE encoders start as the decoder's transpose (tied init).
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
from scope_hub.metadata import DictionaryConfig
from trainers.config import TrainConfig
from trainers.forward import LayerParams, layer_params


def dictionary_config(cfg: TrainConfig, *, d_in: int, d_out: int, n_layers: int) -> DictionaryConfig:
    """The :class:`DictionaryConfig` the run trains (metadata filled in later)."""
    d = cfg.dictionary
    layers = cfg.harvest.layers or (list(range(n_layers)) if d.type == "clt" else None)
    return DictionaryConfig(
        type=d.type,
        architecture=d.architecture,
        d_in=d_in,
        d_sae=d.d_sae,
        d_out=d_out,
        k=d.k if d.architecture in ("topk", "batchtopk") else None,  # e.g. a k inherited from a TopK config
        layers=layers if d.type == "clt" else None,
        layer=cfg.harvest.layer if d.type != "clt" else None,
        affine_skip=d.affine_skip if d.type == "clt" else d.type == "skip_transcoder",
        l0_target=d.l0_target if d.architecture == "jumprelu" else (float(d.k) if d.k else None),
        matryoshka_groups=d.matryoshka_groups,
        model=cfg.model.id,
        model_revision=cfg.model.revision,
        site=cfg.harvest.site if cfg.model.id else None,
        site_out=cfg.site_out if cfg.model.id and d.type != "sae" else None,
        variant=d.variant,
    )


def build_dictionary(
    cfg: TrainConfig, *, d_in: int, d_out: int, n_layers: int, device: str | torch.device = "cpu"
) -> Dictionary:
    """An uninitialised dictionary of the configured kind (:func:`init_dictionary` fills every parameter).

    ``skip_init`` skips the core's default initialisation: it neither costs time nor draws from
    the global RNG the run seeded.
    """
    config = dictionary_config(cfg, d_in=d_in, d_out=d_out, n_layers=n_layers)
    return torch.nn.utils.skip_init(KINDS[config.type], config, device=device, dtype=torch.float32)


@torch.no_grad()
def init_dictionary(
    dictionary: Dictionary,
    cfg: TrainConfig,
    gen: torch.Generator,
    b_dec: torch.Tensor | None = None,
    x_mean: torch.Tensor | None = None,
) -> None:
    """Initialise every parameter (``b_dec`` [L, d_out]: e.g. the mean target; zeros when None).

    ``x_mean`` [L, d_in], the mean input, centres the pre-activations: ``b_enc = -x_mean @ w_enc``, as
    subtracting ``b_dec`` from the input before encoding does at initialisation (Gao et al. 2024, SAELens).
    Residual streams have a large mean; without this, every latent whose random direction points away
    from it starts with negative pre-activations on all tokens, never fires, and gets no gradient (not
    even from aux-k, whose activations are ReLU'd): measured 30% dead latents on the quick demo's SAE.
    """
    arch = cfg.dictionary.architecture
    for i, lp in enumerate(layer_params(dictionary)):
        w_dec = torch.randn(lp.w_dec.shape, generator=gen)
        flat = w_dec.view(w_dec.shape[0], -1)
        flat /= flat.norm(dim=1, keepdim=True)
        lp.w_dec.copy_(w_dec)
        if lp.w_dec.dim() == 2 and lp.w_dec.shape[1] == lp.w_enc.shape[0]:
            lp.w_enc.copy_(lp.w_dec.T)
        else:
            w_enc = torch.randn(lp.w_enc.shape[1], lp.w_enc.shape[0], generator=gen)
            lp.w_enc.copy_((w_enc / w_enc.norm(dim=1, keepdim=True)).T)
        if x_mean is not None:
            lp.b_enc.copy_(-(x_mean[i].to(lp.w_enc) @ lp.w_enc))
        else:
            lp.b_enc.zero_()
        lp.b_dec.copy_(b_dec[i] if b_dec is not None else torch.zeros_like(lp.b_dec))
        if lp.threshold is not None:
            lp.threshold.fill_(cfg.loss.threshold_init if arch == "jumprelu" else 0.0)
        if lp.skip is not None:
            lp.skip.zero_()


def trainable_parameters(dictionary: Dictionary) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters the optimizer updates (BatchTopK's threshold is estimated, not learned)."""
    out = []
    for name, param in dictionary.named_parameters():
        learned = not (name.endswith("threshold") and dictionary.config.architecture == "batchtopk")
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
