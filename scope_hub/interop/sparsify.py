"""EleutherAI sparsify (PyPI ``eai-sparsify``) per-hookpoint folders in and out.

A folder is named after its hookpoint (``layers.12``, ``layers.12.mlp``, a module path under the
model's base model) and holds ``cfg.json`` (``SparseCoderConfig`` fields + ``d_in``) and
``sae.safetensors``: ``encoder.weight [d_sae, d_in]``, ``encoder.bias [d_sae]``,
``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, optional ``W_skip [d_in, d_in]`` (applied as
``x @ W_skip.T``). Checked against eai-sparsify 1.3.3 (``sparse_coder.py``,
``fused_encoder.py``): features = top-k of ``relu((x - b_dec) @ encoder.weight.T + encoder.bias)``,
where ``b_dec`` is subtracted only when ``transcode`` is false.

Mapping: ``transcode: false`` -> our SAE with ``b_enc = encoder.bias - b_dec @ w_enc`` (and the
reverse on export: sparsify's own semantics are kept, so the encoder bias round-trips to float
rounding, not bit-exactly); ``transcode: true`` -> transcoder (skip transcoder with ``W_skip``),
exact. Only TopK and ``d_out == d_in`` exist in sparsify; ``groupmax`` is refused. Hook points
become ``model.<hookpoint>.output`` (``.input``/``.output`` for transcoders); the run's
``config.json`` one level up gives the model. Our config travels in ``scope_hub_config.json``
beside ``cfg.json`` (sparsify prints every unknown ``cfg.json`` field it drops).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scope_hub.config_io import site_of_hook_point, validate_config
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import FormatError, UnsupportedError
from scope_hub.interop.common import (
    EMBED_KEY,
    SIDECAR,
    atomic_folder,
    config_field,
    embed,
    exported,
    finish_load,
    fold_b_dec_in,
    load_safetensors,
    parent_model_name,
    read_json,
    save_safetensors,
    unfold_b_dec_in,
    write_json,
)
from scope_hub.kinds import SAE, SKIP_TRANSCODER, TOPK, TRANSCODER, kind

NAME = "sparsify"
FILES = "cfg.json + sae.safetensors"
SUPPORTED = {SAE: (TOPK,), TRANSCODER: (TOPK,), SKIP_TRANSCODER: (TOPK,)}


def detect(folder: Path) -> bool:
    return (Path(folder) / "cfg.json").is_file() and (Path(folder) / "sae.safetensors").is_file()


def load(folder: Path, *, allow_nonfinite: bool = False) -> Dictionary:
    """A sparsify folder as a dictionary; ``allow_nonfinite`` as for every converter
    (:mod:`scope_hub.interop.formats`), and a bad ``cfg.json`` field is a ConfigError naming it."""
    folder = Path(folder)
    where = str(folder / "cfg.json")
    cfg = read_json(folder / "cfg.json", "cfg.json")
    if cfg.get("activation", TOPK) != TOPK:
        raise UnsupportedError(f"{folder}: sparsify activation {cfg.get('activation')!r} is not supported (topk only)")
    d_in, k = config_field(cfg, "d_in", int, where), config_field(cfg, "k", int, where)
    if d_in is None or k is None:
        raise FormatError(f"{where}: needs d_in and k")
    t = load_safetensors(folder / "sae.safetensors")
    missing = [n for n in ("encoder.weight", "encoder.bias", "W_dec", "b_dec") if n not in t]
    if missing:
        raise FormatError(f"{folder / 'sae.safetensors'}: missing tensors {missing}")
    d_sae = config_field(cfg, "num_latents", int, where) or d_in * config_field(cfg, "expansion_factor", int, where, 32)
    w_enc = t.pop("encoder.weight").T.contiguous()
    bias, w_dec, b_dec = t.pop("encoder.bias"), t.pop("W_dec"), t.pop("b_dec")
    transcode = bool(cfg.get("transcode", False))
    params = {
        "w_enc": w_enc,
        "b_enc": bias if transcode else fold_b_dec_in(bias, w_enc, b_dec),
        "w_dec": w_dec,
        "b_dec": b_dec,
    }
    if "W_skip" in t:
        params["affine_skip_connection"] = t.pop("W_skip").T.contiguous()
    if t:
        raise FormatError(f"{folder / 'sae.safetensors'}: unexpected tensors {sorted(t)}")
    type_ = SKIP_TRANSCODER if "affine_skip_connection" in params else TRANSCODER if transcode else SAE
    hookpoint = f"model.{folder.name}"
    predicts = not kind(type_).reconstructs_input
    hook_in = f"{hookpoint}.input" if predicts else f"{hookpoint}.output"
    hook_out = f"{hookpoint}.output" if predicts else None
    site, layer = site_of_hook_point(hook_in)
    fields = dict(
        type=type_,
        architecture=TOPK,
        k=k,
        d_in=d_in,
        d_sae=d_sae,
        d_out=w_dec.shape[-1],
        model=parent_model_name(folder),
        site=site,
        layer=layer,
        hook_point_in=hook_in,
        hook_point_out=hook_out,
        site_out=site_of_hook_point(hook_out)[0] if hook_out else None,
        provenance={"source": "sparsify", "source_uri": str(folder)},
        source_config={k: v for k, v in cfg.items() if k != EMBED_KEY},
    )
    files = {"params.safetensors": params}
    sidecar = read_json(folder / SIDECAR, SIDECAR) if (folder / SIDECAR).is_file() else cfg.get(EMBED_KEY)
    config = validate_config(fields, where)
    source = str(folder / SIDECAR)
    return finish_load(config, files, sidecar, where=str(folder), source=source, allow_nonfinite=allow_nonfinite)


def save(dictionary: Dictionary, out: Path) -> Path:
    """A sparsify folder ``SparseCoder.load_from_disk`` loads to the same features.

    Name ``out`` after the hookpoint (``layers.12``) if sparsify tools should find it.
    """
    config, files = exported(dictionary, NAME, SUPPORTED, same_width=True)
    t = files["params.safetensors"]
    transcode = not kind(config.type).reconstructs_input
    cfg: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": max(1, config.d_sae // config.d_in),
        "normalize_decoder": False,
        "num_latents": config.d_sae,
        "k": config.k,
        "multi_topk": False,
        "skip_connection": config.affine_skip,
        "transcode": transcode,
        "d_in": config.d_in,
    }
    bias = t["b_enc"] if transcode else unfold_b_dec_in(t["b_enc"], t["w_enc"], t["b_dec"])
    weights = {
        "encoder.weight": t["w_enc"].T.contiguous(),
        "encoder.bias": bias,
        "W_dec": t["w_dec"],
        "b_dec": t["b_dec"],
    }
    if "affine_skip_connection" in t:
        weights["W_skip"] = t["affine_skip_connection"].T.contiguous()
    with atomic_folder(out) as stage:
        write_json(stage / "cfg.json", cfg)
        write_json(stage / SIDECAR, embed(config))
        save_safetensors(stage / "sae.safetensors", weights)
    return Path(out)
