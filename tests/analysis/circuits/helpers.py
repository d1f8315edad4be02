"""Shared fixtures-by-function for the circuits tests: a prompt and random dictionaries for tiny models."""

from __future__ import annotations

import torch

from scope_hub.testing.dictionaries import make_config, make_dictionary
from scope_hub.testing.tiny_models import BOS_ID

IDS = torch.tensor([BOS_ID, 72, 101, 108, 108, 111, 32, 119, 111, 114])
"""<bos> "Hello wor"."""


def dictionaries(kind: str, arch: str, dtype=torch.float64, d: int = 64, seed: int = 0, d_sae: int = 16):
    """Random transcoders (one per layer of a 3-layer tiny model) or one 3-layer CLT with an affine skip."""
    if kind == "clt":
        cfg = make_config(
            "clt", arch, d_in=d, d_out=d, d_sae=d_sae, n_layers=3, site="mlp_in", site_out="mlp_out", affine_skip=True
        )
        ds = [make_dictionary(cfg, seed=seed, dtype=dtype)]
    else:
        ds = [
            make_dictionary(
                make_config(kind, arch, d_in=d, d_out=d, d_sae=d_sae, site="mlp_in", site_out="mlp_out", layer=L),
                seed=seed + L,
                dtype=dtype,
            )
            for L in range(3)
        ]
    with torch.no_grad():  # keep the splice's writes modest, as trained dictionaries' are
        for dictionary in ds:
            for name, p in dictionary.named_parameters():
                if "w_dec" in name or "affine" in name:
                    p.mul_(0.1)
    return ds


def trace_command(model_folder, transcoders, out, *options: str) -> list[str]:
    """``scope-hub trace "Hello wor"`` arguments: the model folder, the transcoders, the output file, ``options``."""
    return [
        "trace",
        "Hello wor",
        "--model",
        str(model_folder),
        "--transcoders",
        str(transcoders),
        "--out",
        str(out),
        *options,
    ]
