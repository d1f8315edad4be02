"""Build random, fully initialised dictionaries of any kind for tests."""

from __future__ import annotations

import torch

from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.metadata import DictionaryConfig

SINGLE = ("sae", "transcoder", "skip_transcoder")
ARCHS = ("jumprelu", "topk", "batchtopk", "relu")


def make_config(type_: str, architecture: str, *, d_in=6, d_sae=16, d_out=None, n_layers=3, k=3, **extra):
    if d_out is None:
        d_out = d_in if type_ in ("sae", "crosscoder") else d_in + 2
    fields = dict(type=type_, architecture=architecture, d_in=d_in, d_sae=d_sae, d_out=d_out, **extra)
    if architecture in ("topk", "batchtopk"):
        fields["k"] = k
    if type_ in ("clt", "crosscoder"):
        fields["layers"] = list(range(n_layers))
    return DictionaryConfig(**fields)


def make_dictionary(config: DictionaryConfig, seed: int = 0, dtype=torch.float32) -> Dictionary:
    """Random weights; thresholds near the median pre-activation so about half the latents fire."""
    gen = torch.Generator().manual_seed(seed)
    module = KINDS[config.type](config, dtype=dtype)
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "threshold":
                param.copy_(torch.rand(param.shape, generator=gen) * 0.5 + 0.05)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return module


def numpy_params(module: Dictionary) -> dict | list[dict]:
    """Parameters as float64 NumPy arrays, grouped per file as stored (a list for CLTs)."""
    groups: dict[str, dict] = {}
    for spec in module.tensor_specs(module.config):  # the module's view (CLT w_dec: layers i..n-1 only)
        groups.setdefault(spec.file, {})[spec.name] = module.get_parameter(spec.attr).detach().double().numpy()
    ordered = [groups[f] for f in sorted(groups, key=lambda f: int("".join(c for c in f if c.isdigit()) or 0))]
    return ordered if module.config.type == "clt" else ordered[0]
