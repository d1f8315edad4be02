"""Independent NumPy (float64) references of every dictionary's math, written from DESIGN.md §4.

Deliberately loop-based and free of scope_hub imports, so a shared bug cannot hide.
"""

from __future__ import annotations

import numpy as np


def activation(pre: np.ndarray, architecture: str, threshold=None, k=None, training=False) -> np.ndarray:
    relu = np.maximum(pre, 0.0)
    if architecture == "relu":
        return relu
    if architecture == "jumprelu" or (architecture == "batchtopk" and not training):
        return (pre > threshold) * relu
    if architecture == "topk":
        out = np.zeros_like(pre)
        flat_pre, flat_out = pre.reshape(-1, pre.shape[-1]), out.reshape(-1, pre.shape[-1])
        for row, dst in zip(flat_pre, flat_out):
            top = np.argsort(-row, kind="stable")[:k]
            dst[top] = np.maximum(row[top], 0.0)
        return out
    if architecture == "batchtopk":
        flat = relu.reshape(-1)
        n_tokens = flat.size // pre.shape[-1]
        keep = np.argsort(-flat, kind="stable")[: k * n_tokens]
        out = np.zeros_like(flat)
        out[keep] = flat[keep]
        return out.reshape(pre.shape)
    raise ValueError(architecture)


def single_layer(params: dict, x: np.ndarray, architecture: str, k=None, training=False):
    """(features, output) of an SAE / transcoder / skip transcoder."""
    pre = x @ params["w_enc"] + params["b_enc"]
    f = activation(pre, architecture, params.get("threshold"), k, training)
    y = f @ params["w_dec"] + params["b_dec"]
    if "affine_skip_connection" in params:
        y = y + x @ params["affine_skip_connection"]
    return f, y


def clt(per_layer: list[dict], x: np.ndarray, architecture: str, k=None):
    """(features [..., n, d_sae], outputs [..., n, d_out]) of a cross-layer transcoder, by explicit sums."""
    n = len(per_layer)
    feats = []
    for i, p in enumerate(per_layer):
        pre = x[..., i, :] @ p["w_enc"] + p["b_enc"]
        feats.append(activation(pre, architecture, p.get("threshold"), k))
    outs = []
    for j in range(n):
        y = per_layer[j]["b_dec"].copy()
        for i in range(j + 1):
            y = y + feats[i] @ per_layer[i]["w_dec"][:, j - i, :]
        if "affine_skip_connection" in per_layer[j]:
            y = y + x[..., j, :] @ per_layer[j]["affine_skip_connection"]
        outs.append(y)
    return np.stack(feats, axis=-2), np.stack(outs, axis=-2)


def crosscoder(params: dict, x: np.ndarray, architecture: str, k=None):
    """(features, outputs [..., n, d_out]) of a crosscoder over stacked layers."""
    n = x.shape[-2]
    pre = params["b_enc"] + sum(x[..., layer, :] @ params["w_enc"][layer] for layer in range(n))
    f = activation(pre, architecture, params.get("threshold"), k)
    y = np.stack([f @ params["w_dec"][:, layer, :] + params["b_dec"][layer] for layer in range(n)], axis=-2)
    return f, y
