"""From trained parameters to a published dictionary: fold, describe, save, push.

:func:`export_dictionary` copies the trained weights into a fresh dictionary,
folds the normalisation (or records it), and fills the metadata: hook points,
width label, training L0 target, and provenance (data source + sha256, seed,
the full training config, software versions). :func:`save_and_publish` writes
the folder with its card (``README.md``, rendered by :mod:`scope_hub.cards`)
and pushes it to the configured registry under :func:`registry_key`.

Example:
    >>> from trainers.config import load_config
    >>> cfg = load_config(None, ["model.id=google/gemma-3-270m", "harvest.layer=6",
    ...     "dictionary.architecture=topk", "dictionary.k=32"])
    >>> registry_key(cfg, layers=[6])
    'google/gemma-3-270m:resid_post/layer_6/width_16k/sae/topk_k32'
"""

from __future__ import annotations

import datetime
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from scope_hub.cards import render_dictionary_card
from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.keys import width_label
from scope_hub.metadata import Provenance
from trainers.config import TrainConfig
from trainers.harvest import SiteSpec
from trainers.normalization import fold_normalization, normalization_metadata
from trainers.trainer import TrainResult

_PACKAGES = ("scope-hub", "torch", "transformers", "safetensors", "numpy", "pydantic")


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape the numbers, plus Python."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


PUSHER_FIELDS = (("output", "dir"), ("output", "registry"), ("harvest", "cache_dir"), ("train", "checkpoint_dir"))
"""Training-config fields that name the pusher's own folders and registry URL (which may carry credentials;
the card states where it was published, redacted); left out of what is published."""


def shareable_training_config(cfg: TrainConfig) -> dict[str, Any]:
    """The training config as a card shows it: the pusher's local folders and registry URL left out (they
    would mean nothing elsewhere and say something about the pusher's machine), data files by name (their
    content is pinned by the dataset sha256). It still validates as a config (defaults fill the gaps).

    Example:
        >>> from trainers.config import load_config
        >>> cfg = load_config(None, ["synthetic.d_in=8", "output.dir=/home/me/run", "data.paths=[/home/me/a.jsonl]"])
        >>> shown = shareable_training_config(cfg)
        >>> "dir" in shown["output"], shown["data"]["paths"]
        (False, ['a.jsonl'])
    """
    data = cfg.model_dump(mode="json")
    for section, name in PUSHER_FIELDS:
        data[section].pop(name, None)
    data["data"]["paths"] = [Path(path).name for path in data["data"]["paths"]]
    return data


def default_variant(cfg: TrainConfig) -> str:
    """``jumprelu_l0_32``, ``topk_k32``, ``batchtopk_k32`` or ``relu`` (+ ``_matryoshka``, ``_affine``)."""
    d = cfg.dictionary
    if d.variant:
        return d.variant
    if d.architecture == "jumprelu":
        name = f"jumprelu_l0_{d.l0_target:g}"
    else:
        name = "relu" if d.architecture == "relu" else f"{d.architecture}_k{d.k}"
    if d.matryoshka_groups:
        name += "_matryoshka"
    if d.type == "clt" and d.affine_skip:
        name += "_affine"
    return name


def registry_key(cfg: TrainConfig, layers: list[int]) -> str:
    """The key a run publishes under (``output.key`` wins)."""
    if cfg.output.key:
        return cfg.output.key
    if not cfg.model.id or Path(cfg.model.id).exists():
        raise ValueError("output.key is required when model.id is not a Hub-style id (e.g. a local path)")
    d = cfg.dictionary
    site = "mlp" if d.type != "sae" and cfg.harvest.site == "mlp_in" and cfg.site_out == "mlp_out" else cfg.harvest.site
    layer = str(layers[0]) if len(layers) == 1 else "-".join(str(x) for x in layers)
    return f"{cfg.model.id}:{site}/layer_{layer}/width_{width_label(d.d_sae)}/{d.type}/{default_variant(cfg)}"


def _template(hookpoints: list, layers: list[int]) -> str:
    text = str(hookpoints[0])
    return text if len(layers) == 1 else text.replace(f".{layers[0]}.", ".{layer}.", 1)


@torch.no_grad()
def export_dictionary(
    result: TrainResult, cfg: TrainConfig, data: dict[str, Any], spec: SiteSpec | None = None
) -> Dictionary:
    """A standalone, described copy of the trained dictionary (raw-activation units when folded)."""
    trained = result.dictionary
    config = trained.config.model_copy(deep=True)
    out = torch.nn.utils.skip_init(KINDS[config.type], config, dtype=torch.float32)  # every param copied below
    for name, param in out.named_parameters():
        param.copy_(trained.get_parameter(name).detach().cpu())
        param.requires_grad_(False)
    if cfg.output.fold_normalization:
        fold_normalization(out, result.scale_in, result.scale_out)
    else:
        out.config.normalization = normalization_metadata(result.scale_in, result.scale_out)
    c = out.config
    c.width_label = width_label(c.d_sae)
    c.model_revision = c.model_revision or data.get("model_revision")
    c.variant = default_variant(cfg)
    if spec is not None:
        c.hook_point_in = _template(spec.inputs, spec.layers)
        c.hook_point_out = _template(spec.outputs, spec.layers) if spec.outputs else None
    c.provenance = Provenance(
        source="trained",
        source_uri=data.get("harvest"),
        dataset=data.get("dataset"),
        dataset_sha256=data.get("dataset_sha256"),
        seed=cfg.train.seed,
        training_config=shareable_training_config(cfg),
        software=software_versions(),
        created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    return out


def save_and_publish(dictionary: Dictionary, cfg: TrainConfig, layers: list[int]) -> tuple[Path, Any]:
    """Write ``output.dir`` (config.json, safetensors, README.md card); push when ``output.registry`` is set.

    Returns ``(folder, PushResult or None)``.
    """
    key = None
    try:
        key = registry_key(cfg, layers)
    except ValueError:
        if cfg.output.registry:
            raise
    card = (
        render_dictionary_card(
            dictionary.config, key, None, license=cfg.output.license, registry_url=cfg.output.registry
        )
        if key
        else None
    )
    folder = dictionary.save_pretrained(cfg.output.dir, card=card)
    if not cfg.output.registry:
        return folder, None
    from scope_hub.registry import Registry

    return folder, Registry(cfg.output.registry).push(folder, key)
