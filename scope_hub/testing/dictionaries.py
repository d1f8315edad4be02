"""Random, fully initialised dictionaries of any kind, and the suite every dictionary kind must pass.

Example:
    >>> sae = make_dictionary(make_config("sae", "topk"))
    >>> sae.config.k, sae.w_enc.shape
    (3, torch.Size([6, 16]))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.kinds import ARCHITECTURES, architecture, kind, kinds_where
from scope_hub.metadata import DictionaryConfig
from scope_hub.tensor_layout import check_folder

SINGLE = kinds_where(layout="single")
"""The single-layer kinds (one params.safetensors)."""
ARCHS = tuple(ARCHITECTURES)
"""Every architecture."""


def make_config(
    type_: str,
    architecture_name: str,
    *,
    d_in: int = 6,
    d_sae: int = 16,
    d_out: int | None = None,
    n_layers: int = 3,
    k: int = 3,
    **extra: object,
) -> DictionaryConfig:
    """A small valid config of any kind: d_out differs from d_in where the kind allows it."""
    info = kind(type_)
    if d_out is None:
        d_out = d_in if info.reconstructs_input else d_in + 2
    fields: dict[str, object] = dict(
        type=type_, architecture=architecture_name, d_in=d_in, d_sae=d_sae, d_out=d_out, **extra
    )
    if architecture(architecture_name).needs_k:
        fields["k"] = k
    if info.multi_layer:
        fields["layers"] = list(range(n_layers))
    return DictionaryConfig(**fields)


def make_dictionary(config: DictionaryConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> Dictionary:
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
    return ordered if kind(module.config.type).per_layer_decoders else ordered[0]


def check_dictionary_kind(type_: str, folder: Path, *, architectures: tuple[str, ...] = ARCHS) -> None:
    """The suite every dictionary kind passes: table, config, layout, save/load (eager and lazy), error.

    For each architecture: the class the table names builds from a config; its parameters are
    exactly the tensors :mod:`scope_hub.tensor_layout` lists; ``save_pretrained`` writes a folder
    the torch-free check accepts; loading it eagerly and lazily gives the same outputs; and
    ``error()`` defaults its target to the input exactly for kinds that reconstruct their input.

    Example:
        >>> import tempfile
        >>> check_dictionary_kind("transcoder", Path(tempfile.mkdtemp()))
    """
    info = kind(type_)
    for arch in architectures:
        config = make_config(type_, arch)
        module = make_dictionary(config)
        assert type(module).type == type_, f"{type(module).__name__}.type must be {type_!r}"
        specs = module.tensor_specs(config)
        assert {s.attr for s in specs} == {n for n, _ in module.named_parameters()}, "parameters != tensor specs"
        leading = (4, config.n_layers) if info.multi_layer else (4,)
        x = torch.randn(*leading, config.d_in, generator=torch.Generator().manual_seed(1))
        expected = module(x).detach()
        out = module.save_pretrained(Path(folder) / f"{type_}_{arch}")
        assert check_folder(out).type == type_
        for lazy in (False, True):
            loaded = Dictionary.from_pretrained(out, lazy=lazy)
            assert type(loaded) is type(module)
            np.testing.assert_allclose(loaded(x).detach().numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
        if info.reconstructs_input:
            torch.testing.assert_close(loaded.error(x), x - loaded(x))
        else:
            try:
                loaded.error(x)
            except ValueError:
                pass
            else:
                raise AssertionError(f"a {type_} predicts another site: error(x) without target= must refuse")
