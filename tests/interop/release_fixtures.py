"""Tiny Gemma Scope 1 and 2 release trees in the published layouts, including malformed folders.

Widths are tiny (d_in 16, d_sae 32) but the folder names, file names, tensor names and config
fields are the published ones. :data:`GS2_EXPECTED` / :data:`GS1_EXPECTED` list what an import
must produce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

D, S = 16, 32
MODEL = "google/gemma-3-270m"


def gs2_tensors(seed: int, d_in: int = D, d_out: int = D, affine: bool = False, d_dec: tuple = ()) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {
        "w_enc": torch.randn(d_in, S, generator=g),
        "b_enc": torch.randn(S, generator=g),
        "threshold": torch.rand(S, generator=g) * 0.5 + 0.05,
        "w_dec": torch.randn(S, *d_dec, d_out, generator=g),
        "b_dec": torch.randn(d_out, generator=g),
    }
    if affine:
        t["affine_skip_connection"] = torch.randn(d_in, d_out, generator=g)
    return t


def gs2_config(hook_in: str, hook_out: str | None = None, type_: str = "sae", affine: bool = False) -> dict:
    return {
        "hf_hook_point_in": hook_in,
        "hf_hook_point_out": hook_out or hook_in,
        "width": S,
        "model_name": "gemma-v3-270m-pt",
        "architecture": "jump_relu",
        "l0": 17,
        "affine_connection": affine,
        "type": type_,
    }


def _folder(root: Path, rel: str, config: dict | None, tensors: dict | None) -> Path:
    folder = root / rel
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        save_file(tensors, str(folder / "params.safetensors"))
    return folder


def _resid(layer: int) -> dict:
    return gs2_config(f"model.layers.{layer}.output")


def _transcoder(layer: int, affine: bool) -> dict:
    return gs2_config(
        f"model.layers.{layer}.pre_feedforward_layernorm.output",
        f"model.layers.{layer}.post_feedforward_layernorm.output",
        "transcoder",
        affine,
    )


def make_gs2_release(root: Path, *, malformed: bool = True) -> Path:
    """A ``gemma-scope-2-270m-pt`` tree under ``root`` (the folder name tells the repo)."""
    rel_root = root / "gemma-scope-2-270m-pt"
    rel_root.mkdir(parents=True)
    (rel_root / "README.md").write_text("# tiny Gemma Scope 2 fixture\n")
    _folder(rel_root, "resid_post/layer_12_width_16k_l0_small", _resid(12), gs2_tensors(1))
    shutil.copytree(
        rel_root / "resid_post/layer_12_width_16k_l0_small", rel_root / "resid_post_all/layer_12_width_16k_l0_small"
    )  # identical: same dictionary
    _folder(rel_root, "resid_post/layer_12_width_16k_l0_big", _resid(12), gs2_tensors(2))
    _folder(rel_root, "resid_post_all/layer_12_width_16k_l0_big", _resid(12), gs2_tensors(3))  # differs
    _folder(rel_root, "resid_post_all/layer_3_width_16k_l0_small", _resid(3), gs2_tensors(4))
    _folder(rel_root, "resid_post/layer_12_width_262k_l0_medium_seed_1", _resid(12), gs2_tensors(5))
    _folder(
        rel_root,
        "attn_out/layer_9_width_16k_l0_small",
        gs2_config("model.layers.9.self_attn.o_proj.input"),
        gs2_tensors(6),
    )
    _folder(
        rel_root,
        "mlp_out/layer_5_width_65k_l0_big",
        gs2_config("model.layers.5.post_feedforward_layernorm.output"),
        gs2_tensors(7),
    )
    _folder(rel_root, "transcoder/layer_9_width_16k_l0_small_affine", _transcoder(9, True), gs2_tensors(8, affine=True))
    _folder(rel_root, "transcoder/layer_9_width_16k_l0_small", _transcoder(9, False), gs2_tensors(9))
    clt = _folder(rel_root, "clt/width_262k_l0_medium_affine", {**_transcoder(0, True), "type": "clt"}, None)
    for i in range(3):  # full-width decoders, as circuit-tracer's Gemma Scope 2 loader indexes them
        t = gs2_tensors(20 + i, affine=True, d_dec=(3,))
        t["w_dec"][:, :i] = 0
        save_file(t, str(clt / f"params_layer_{i}.safetensors"))
    g = torch.Generator().manual_seed(30)
    _folder(
        rel_root,
        "crosscoder/width_65k_l0_medium",
        {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "type": "crosscoder", "l0": 40},
        {
            "w_enc": torch.randn(4 * D, S, generator=g),
            "b_enc": torch.randn(S, generator=g),
            "threshold": torch.rand(S, generator=g) * 0.5,
            "w_dec": torch.randn(S, 4 * D, generator=g),
            "b_dec": torch.randn(4 * D, generator=g),
        },
    )
    if malformed:
        _folder(rel_root, "resid_post/layer_15_width_16k_l0_small", _resid(15), None)  # no params file
        bad = gs2_tensors(10)
        bad["w_dec"] = torch.randn(S + 1, D)
        _folder(
            rel_root,
            "mlp_out/layer_7_width_16k_l0_small",
            gs2_config("model.layers.7.post_feedforward_layernorm.output"),
            bad,
        )  # wrong shapes
        _folder(rel_root, "resid_post/banana", _resid(1), gs2_tensors(11))  # unexpected name
        _folder(rel_root, "weird_top/layer_1_width_16k_l0_small", _resid(1), gs2_tensors(12))  # unexpected top
        _folder(
            rel_root, "transcoder/layer_5_width_16k_l0_big_affine", _transcoder(5, False), gs2_tensors(13)
        )  # says affine, holds no skip
    return rel_root


GS2_EXPECTED = {  # folder -> (status, key)
    "resid_post/layer_12_width_16k_l0_small": ("published", f"{MODEL}:resid_post/layer_12/width_16k/sae/l0_small"),
    "resid_post_all/layer_12_width_16k_l0_small": ("alias", f"{MODEL}:resid_post/layer_12/width_16k/sae/l0_small"),
    "resid_post/layer_12_width_16k_l0_big": ("published", f"{MODEL}:resid_post/layer_12/width_16k/sae/l0_big"),
    "resid_post_all/layer_12_width_16k_l0_big": ("published", f"{MODEL}:resid_post/layer_12/width_16k/sae/l0_big_all"),
    "resid_post_all/layer_3_width_16k_l0_small": ("published", f"{MODEL}:resid_post/layer_3/width_16k/sae/l0_small"),
    "resid_post/layer_12_width_262k_l0_medium_seed_1": (
        "published",
        f"{MODEL}:resid_post/layer_12/width_262k/sae/l0_medium_seed_1",
    ),
    "attn_out/layer_9_width_16k_l0_small": ("published", f"{MODEL}:attn_out/layer_9/width_16k/sae/l0_small"),
    "mlp_out/layer_5_width_65k_l0_big": ("published", f"{MODEL}:mlp_out/layer_5/width_65k/sae/l0_big"),
    "transcoder/layer_9_width_16k_l0_small_affine": (
        "published",
        f"{MODEL}:mlp/layer_9/width_16k/skip_transcoder/l0_small_affine",
    ),
    "transcoder/layer_9_width_16k_l0_small": ("published", f"{MODEL}:mlp/layer_9/width_16k/transcoder/l0_small"),
    "clt/width_262k_l0_medium_affine": ("published", f"{MODEL}:mlp/layer_all/width_262k/clt/l0_medium_affine"),
    "crosscoder/width_65k_l0_medium": (
        "published",
        f"{MODEL}:resid_post/layer_5-9-12-15/width_65k/crosscoder/l0_medium",
    ),
}
GS2_FAILURES = {  # folder -> words the reason must contain
    "resid_post/layer_15_width_16k_l0_small": "params.safetensors",
    "mlp_out/layer_7_width_16k_l0_small": "w_dec",
    "resid_post/banana": "unexpected folder name",
    "weird_top/layer_1_width_16k_l0_small": "unexpected top-level folder",
    "transcoder/layer_5_width_16k_l0_big_affine": "folder name says skip_transcoder",
}


class _Boom:
    """Unpickling this would write a marker file: proof that nothing was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled!"))


def npz_params(seed: int, d_in: int = D) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {
        "W_enc": g.standard_normal((d_in, S), dtype=np.float32),
        "W_dec": g.standard_normal((S, d_in), dtype=np.float32),
        "b_enc": g.standard_normal(S, dtype=np.float32),
        "b_dec": g.standard_normal(d_in, dtype=np.float32),
        "threshold": (g.random(S, dtype=np.float32) * 0.5 + 0.05),
    }


def make_gs1_release(root: Path, name: str = "gemma-scope-2b-pt-res", marker: Path | None = None) -> Path:
    """A Gemma Scope (1) tree; with ``marker``, one params.npz holds a pickled object array."""
    rel_root = root / name
    for i, rel in enumerate(
        ["layer_0/width_16k/average_l0_12", "layer_0/width_16k/average_l0_50", "layer_3/width_65k/average_l0_20"]
    ):
        (rel_root / rel).mkdir(parents=True)
        np.savez(rel_root / rel / "params.npz", **npz_params(i))
    if marker is not None:
        (rel_root / "layer_1/width_16k/average_l0_9").mkdir(parents=True)
        evil = np.empty(1, dtype=object)
        evil[0] = _Boom(marker)
        with open(rel_root / "layer_1/width_16k/average_l0_9/params.npz", "wb") as handle:
            np.savez(handle, W_enc=evil)
        (rel_root / "embedding/width_4k/average_l0_6").mkdir(parents=True)
        np.savez(rel_root / "embedding/width_4k/average_l0_6/params.npz", **npz_params(7))
        (rel_root / "layer_2/width_16k/average_l0_7").mkdir(parents=True)
        (rel_root / "layer_2/width_16k/average_l0_7/notes.txt").write_text("weights missing\n")
    return rel_root
