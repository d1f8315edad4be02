"""A tiny Gemma 3 whose MLPs *are* transcoders, with a known circuit planted in them.

Each MLP block (``mlp`` + ``post_feedforward_layernorm``) is replaced by its
transcoder, so the transcoders reconstruct the model exactly (every error node
is zero) and the circuit below is the model's real computation::

    token "a" at the last position --> feature A (layer 0) --> feature B (layer 2) --> logit of token Z

A's encoder is the minimum-norm vector whose pre-activation is exactly 1 on the
layer-0 MLP input at that position and exactly 0 at every other position; its
decoder writes a large random direction. B's encoder reads exactly the change
A's write makes to the layer-2 MLP input (1 with A, 0 without it, 0 at every
other position); B's decoder writes along the demeaned unembedding of Z
(through the final norm's gain). Every transcoder also has random distractor features.
The CLT variant plants A -> logit Z through A's cross-layer decoder into layer 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scope_hub.dictionaries import CrossLayerTranscoder, Dictionary, Transcoder
from scope_hub.hooks import capture
from scope_hub.metadata import DictionaryConfig
from scope_hub.testing.tiny_models import tiny_gemma3

PROMPT = torch.tensor([257, 120, 121, 122, 97])  # <bos> x y z a
POS = PROMPT.numel() - 1
FEATURE_A, FEATURE_B, TOKEN_Z = 3, 5, 200
D, D_SAE, N_LAYERS = 64, 16, 3
ALPHA, BETA = 20.0, 20.0


class ExactMLP(nn.Module):
    """An MLP block that computes its transcoder's output."""

    def __init__(self, transcoder: Dictionary) -> None:
        super().__init__()
        self.transcoder = transcoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transcoder(x)


class ExactCLTLayer(nn.Module):
    """Layer ``j`` of a model whose MLP blocks are one CLT (features of earlier layers kept in ``state``)."""

    def __init__(self, clt: CrossLayerTranscoder, j: int, state: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.clt, self.j, self.state = clt, j, state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.state[self.j] = self.clt.encode_layer(self.j, x)
        feats = [self.state[i] for i in range(self.j + 1)]
        return (self.clt.decode_layer(self.j, feats) + self.clt.skip_layer(self.j, x)).to(x.dtype)


@dataclass
class Planted:
    model: nn.Module
    dictionaries: list[Dictionary]
    feature_a: tuple[int, int, int]
    """(layer, position, index) of A."""
    feature_b: tuple[int, int, int] | None
    """(layer, position, index) of B (None for the CLT variant)."""
    token_z: int


def _install(model: nn.Module, modules: list[nn.Module]) -> None:
    for layer, module in zip(model.model.layers, modules):
        layer.mlp = module
        layer.post_feedforward_layernorm = nn.Identity()


def _random_features(d: Dictionary, gen: torch.Generator, prefix: str = "") -> None:
    with torch.no_grad():
        for name, p in d.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            scale = {"w_enc": 0.3, "w_dec": 0.05, "b_enc": 0.1, "b_dec": 0.02}.get(leaf, 0.0)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
            if leaf == "threshold":
                p.fill_(0.3)


def _reads(model: nn.Module, hookpoint: str) -> torch.Tensor:
    with torch.no_grad(), capture(model, [hookpoint]) as acts:
        model(PROMPT[None], use_cache=False)
    return acts[hookpoint][0]


def _selective(rows: list[torch.Tensor], targets: list[float]) -> torch.Tensor:
    """The minimum-norm encoder column ``w`` with ``w . rows[i] == targets[i]``."""
    m = torch.stack(rows)
    return torch.linalg.pinv(m) @ torch.tensor(targets, dtype=m.dtype)


def _others(x: torch.Tensor) -> list[torch.Tensor]:
    return [x[q] for q in range(x.shape[0]) if q != POS]


def _logit_direction(model: nn.Module) -> torch.Tensor:
    """Direction at the last residual that raises Z's demeaned logit most (through the final norm gain)."""
    w_u = model.get_output_embeddings().weight.detach()
    direction = (w_u[TOKEN_Z] - w_u.mean(0)) * (1.0 + model.model.norm.weight.detach())
    return direction / direction.norm()


def planted_transcoders(seed: int = 0) -> Planted:
    """The planted model with per-layer JumpReLU transcoders (fp64)."""
    gen = torch.Generator().manual_seed(seed)
    model = tiny_gemma3(seed).double()
    tcs = [
        Transcoder(
            DictionaryConfig(
                type="transcoder",
                architecture="jumprelu",
                d_in=D,
                d_sae=D_SAE,
                site="mlp_in",
                site_out="mlp_out",
                layer=L,
            ),
            dtype=torch.float64,
        )
        for L in range(N_LAYERS)
    ]
    for tc in tcs:
        _random_features(tc, gen)
        with torch.no_grad():  # A and B start silent
            tc.w_enc[:, [FEATURE_A, FEATURE_B]] = 0
            tc.w_dec[[FEATURE_A, FEATURE_B]] = 0
    _install(model, [ExactMLP(tc) for tc in tcs])
    x0 = _reads(model, "model.layers.0.pre_feedforward_layernorm.output")
    u = torch.randn(D, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        tcs[0].w_enc[:, FEATURE_A] = _selective([x0[POS], *_others(x0)], [1.0] + [0.0] * (POS))
        tcs[0].b_enc[FEATURE_A], tcs[0].threshold[FEATURE_A] = 0.0, 0.5
    x2_off = _reads(model, "model.layers.2.pre_feedforward_layernorm.output")
    with torch.no_grad():
        tcs[0].w_dec[FEATURE_A] = ALPHA * u / u.norm()
    x2_on = _reads(model, "model.layers.2.pre_feedforward_layernorm.output")
    with torch.no_grad():
        tcs[2].w_enc[:, FEATURE_B] = _selective([x2_on[POS], x2_off[POS], *_others(x2_on)], [1.0, 0.0] + [0.0] * POS)
        tcs[2].b_enc[FEATURE_B], tcs[2].threshold[FEATURE_B] = 0.0, 0.5
        tcs[2].w_dec[FEATURE_B] = BETA * _logit_direction(model)
    return Planted(model.eval(), tcs, (0, POS, FEATURE_A), (2, POS, FEATURE_B), TOKEN_Z)


def planted_clt(seed: int = 0) -> Planted:
    """The planted model whose MLP blocks are one CLT with an affine skip (fp64); A writes into layer 2."""
    gen = torch.Generator().manual_seed(seed)
    model = tiny_gemma3(seed).double()
    clt = CrossLayerTranscoder(
        DictionaryConfig(
            type="clt",
            architecture="jumprelu",
            d_in=D,
            d_sae=D_SAE,
            layers=list(range(N_LAYERS)),
            site="mlp_in",
            site_out="mlp_out",
            affine_skip=True,
        ),
        dtype=torch.float64,
    )
    _random_features(clt, gen)
    with torch.no_grad():
        for i in range(N_LAYERS):
            clt.w_enc(i)[:, FEATURE_A] = 0
            clt.w_dec(i)[FEATURE_A] = 0
            clt.get_parameter(f"per_layer.{i}.affine_skip_connection").mul_(0.05)
    state: dict[int, torch.Tensor] = {}
    _install(model, [ExactCLTLayer(clt, j, state) for j in range(N_LAYERS)])
    x0 = _reads(model, "model.layers.0.pre_feedforward_layernorm.output")
    with torch.no_grad():
        clt.w_enc(0)[:, FEATURE_A] = _selective([x0[POS], *_others(x0)], [1.0] + [0.0] * POS)
        clt.get_parameter("per_layer.0.b_enc")[FEATURE_A] = 0.0
        clt.get_parameter("per_layer.0.threshold")[FEATURE_A] = 0.5
        clt.w_dec(0)[FEATURE_A, 2] = BETA * _logit_direction(model)  # layer 0 -> layer 2 decoder
    return Planted(model.eval(), [clt], (0, POS, FEATURE_A), None, TOKEN_Z)
