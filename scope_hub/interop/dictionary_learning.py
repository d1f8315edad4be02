"""dictionary_learning (saprmarks) folders: ``ae.pt`` state dict + ``config.json``, in and out.

``ae.pt`` is read with ``torch.load(..., weights_only=True)`` only; nothing else is ever
unpickled. State-dict names per class (checked against dictionary-learning 0.1.0,
``dictionary.py`` and ``trainers/*.py``; ``config.json["trainer"]["dict_class"]`` names the
class, else it is inferred from the keys):

==========================  ===================================================  ===============
class                       tensors                                              scope-hub
==========================  ===================================================  ===============
AutoEncoder                 encoder.weight/bias, decoder.weight, bias            relu, b_dec subtracted first
AutoEncoderNew              encoder.weight/bias, decoder.weight/bias             relu (exact)
JumpReluAutoEncoder         W_enc, b_enc, W_dec, b_dec, threshold                jumprelu (exact)
AutoEncoderTopK             encoder.weight/bias, decoder.weight, b_dec, k, thr.  topk, b_dec subtracted
BatchTopKSAE                same as AutoEncoderTopK (scalar threshold used)      batchtopk, b_dec subtracted
MatryoshkaBatchTopKSAE      W_enc, b_enc, W_dec, b_dec, k, threshold, group_sizes batchtopk + matryoshka_groups
==========================  ===================================================  ===============

"b_dec subtracted" classes encode ``(x - b_dec) @ W + b``; it is folded into ``b_enc`` on import
and unfolded on export (so that bias round-trips to float rounding). Exports pick the class
that keeps the dictionary's semantics: relu -> AutoEncoderNew, jumprelu -> JumpReluAutoEncoder,
topk -> AutoEncoderTopK, batchtopk -> BatchTopKSAE (MatryoshkaBatchTopKSAE with groups;
JumpReluAutoEncoder when its thresholds differ per latent). Weights are kept as stored: no
decoder normalization (``AutoEncoder.from_pretrained`` normalizes by default; pass
``normalize_decoder=False`` there to compare features).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scope_hub.config_io import validate_config
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import DictionaryNotFoundError, FormatError, UnsupportedError, WeightsFileError
from scope_hub.interop.common import (
    EMBED_KEY,
    atomic_folder,
    config_field,
    embed,
    exported,
    finish_load,
    fold_b_dec_in,
    read_json,
    scalar_tensor,
    unfold_b_dec_in,
    write_json,
)
from scope_hub.kinds import BATCHTOPK, JUMPRELU, RELU, SAE, TOPK, architecture

NAME = "dictionary-learning"
FILES = "ae.pt (read with torch.load(weights_only=True)) + config.json"
SUPPORTED = {SAE: (RELU, JUMPRELU, TOPK, BATCHTOPK)}
_CLASSES = {
    "AutoEncoder": {"encoder.weight", "encoder.bias", "decoder.weight", "bias"},
    "AutoEncoderNew": {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"},
    "JumpReluAutoEncoder": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
    "AutoEncoderTopK": {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"},
    "BatchTopKSAE": {"encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k", "threshold"},
    "MatryoshkaBatchTopKSAE": {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"},
}
_SITE_WORDS = ("resid_post", "resid_pre", "mlp_out", "attn_out", "mlp_in")


def detect(folder: Path) -> bool:
    return (Path(folder) / "ae.pt").is_file()


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DictionaryNotFoundError(f"{path}: ae.pt not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        raise WeightsFileError(
            f"{path}: not a plain tensor state dict loadable with weights_only=True ({exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsFileError(f"{path}: expected a state dict of tensors")
    return dict(state)


def _class_of(state: dict[str, torch.Tensor], trainer: dict[str, Any], where: Path) -> str:
    named = config_field(trainer, "dict_class", str, str(where / "config.json"))
    if named:
        if named not in _CLASSES:
            raise UnsupportedError(
                f"{where}: dictionary_learning class {named!r} is not supported; supported: {', '.join(_CLASSES)}"
            )
        return named
    for name, keys in _CLASSES.items():  # AutoEncoderTopK wins over BatchTopKSAE when unnamed
        if set(state) == keys:
            return name
    raise UnsupportedError(f"{where}: unrecognised state dict keys {sorted(state)} (GatedAutoEncoder is not supported)")


def load(folder: Path, *, allow_nonfinite: bool = False) -> Dictionary:
    """A dictionary_learning folder as a dictionary: a bad ``config.json`` field (the trainer's
    ``dict_class``, ``lm_name``, ``layer``...) is a ConfigError naming it; ``allow_nonfinite``
    lets NaN/inf weights through with a warning."""
    folder = Path(folder)
    where = str(folder / "config.json")
    raw = read_json(folder / "config.json", "config.json") if (folder / "config.json").is_file() else {}
    trainer: dict[str, Any] = config_field(raw, "trainer", dict, where, {})
    state = _read_state(folder / "ae.pt")
    cls = _class_of(state, trainer, folder)
    if set(state) != _CLASSES[cls]:
        raise FormatError(f"{folder / 'ae.pt'}: {cls} needs {sorted(_CLASSES[cls])}, found {sorted(state)}")
    if "W_enc" in state:
        w_enc, b_enc, w_dec, b_dec = state["W_enc"], state["b_enc"], state["W_dec"], state["b_dec"]
    else:
        w_enc, b_enc = state["encoder.weight"].T.contiguous(), state["encoder.bias"]
        w_dec = state["decoder.weight"].T.contiguous()
        b_dec = state[{"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(cls, "b_dec")]
    if cls not in ("AutoEncoderNew", "JumpReluAutoEncoder"):
        b_enc = fold_b_dec_in(b_enc, w_enc, b_dec)
    params = {"w_enc": w_enc, "b_enc": b_enc, "w_dec": w_dec, "b_dec": b_dec}
    fields: dict[str, Any] = {"architecture": RELU}
    if cls == "JumpReluAutoEncoder":
        params["threshold"], fields["architecture"] = state["threshold"], JUMPRELU
    elif cls in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        fields.update(
            architecture=TOPK if cls == "AutoEncoderTopK" else BATCHTOPK, k=int(scalar_tensor(state["k"], "k"))
        )
        if cls != "AutoEncoderTopK":
            params["threshold"] = torch.full_like(b_enc, scalar_tensor(state["threshold"], "threshold"))
        if cls == "MatryoshkaBatchTopKSAE":
            fields["matryoshka_groups"] = [int(g) for g in state["group_sizes"].tolist()]
    submodule = config_field(trainer, "submodule_name", str, where, "")
    site = next((word for word in _SITE_WORDS if word in submodule), None)
    layer = config_field(trainer, "layer", int, where)
    config = validate_config(
        dict(
            type=SAE,
            d_in=w_enc.shape[0],
            d_sae=w_enc.shape[1],
            model=config_field(trainer, "lm_name", str, where),
            site=site,
            layer=layer if layer is not None and layer >= 0 else None,
            provenance={"source": "dictionary-learning", "source_uri": str(folder)},
            source_config={k: v for k, v in raw.items() if k != EMBED_KEY} or None,
            **fields,
        ),
        where,
    )
    files = {"params.safetensors": params}
    embedded = raw.get(EMBED_KEY)
    return finish_load(config, files, embedded, where=str(folder), source=where, allow_nonfinite=allow_nonfinite)


def save(dictionary: Dictionary, out: Path) -> Path:
    """``ae.pt`` + ``config.json`` that ``dictionary_learning.utils.load_dictionary`` reads."""
    config, files = exported(dictionary, NAME, SUPPORTED)
    t = files["params.safetensors"]
    arch = config.architecture
    threshold = t.get("threshold")
    constant = threshold is not None and bool((threshold == threshold[0]).all())
    info = architecture(arch)
    if not info.stores_threshold:
        cls = "AutoEncoderTopK" if info.needs_k else "AutoEncoderNew"
    elif not info.needs_k or not constant:  # a per-latent threshold is a JumpReLU's, whatever trained it
        cls = "JumpReluAutoEncoder"
    else:
        cls = "MatryoshkaBatchTopKSAE" if config.matryoshka_groups else "BatchTopKSAE"
    if cls in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        b_enc = t["b_enc"] if cls == "JumpReluAutoEncoder" else unfold_b_dec_in(t["b_enc"], t["w_enc"], t["b_dec"])
        state = {"W_enc": t["w_enc"], "b_enc": b_enc, "W_dec": t["w_dec"], "b_dec": t["b_dec"]}
        if cls == "JumpReluAutoEncoder":
            state["threshold"] = t["threshold"]
    else:
        bias = t["b_enc"] if cls == "AutoEncoderNew" else unfold_b_dec_in(t["b_enc"], t["w_enc"], t["b_dec"])
        state = {
            "encoder.weight": t["w_enc"].T.contiguous(),
            "encoder.bias": bias,
            "decoder.weight": t["w_dec"].T.contiguous(),
        }
        state["decoder.bias" if cls == "AutoEncoderNew" else "b_dec"] = t["b_dec"]
    if cls in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        state["k"] = torch.tensor(config.k, dtype=torch.int)
        value = float(threshold[0]) if threshold is not None else -1.0
        state["threshold"] = torch.tensor(value, dtype=torch.float32)
    if cls == "MatryoshkaBatchTopKSAE":
        state["group_sizes"] = torch.tensor(config.matryoshka_groups)
    trainer = {
        "dict_class": cls,
        "activation_dim": config.d_in,
        "dict_size": config.d_sae,
        "lm_name": config.model,
        "layer": config.layer,
        "submodule_name": f"{config.site}_layer_{config.layer}" if config.site else None,
    }
    if config.k is not None:
        trainer["k"] = config.k
    if config.matryoshka_groups:
        trainer["group_sizes"] = list(config.matryoshka_groups)
    with atomic_folder(out) as stage:
        torch.save({k: v.detach().contiguous().cpu() for k, v in state.items()}, stage / "ae.pt")
        write_json(stage / "config.json", {"trainer": trainer, EMBED_KEY: embed(config)})
    return Path(out)
