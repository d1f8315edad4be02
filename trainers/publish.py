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
import json
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from scope_hub.atomic_files import atomic_folder
from scope_hub.cards import render_dictionary_card
from scope_hub.dictionaries import KINDS, Dictionary
from scope_hub.feature_stats import FeatureStats
from scope_hub.keys import width_label
from scope_hub.kinds import JUMPRELU, RELU, kind
from scope_hub.metadata import Provenance
from scope_hub.model_resolution import served_weights
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
    if d.architecture == JUMPRELU:
        name = f"jumprelu_l0_{d.l0_target:g}"
    else:
        name = RELU if d.architecture == RELU else f"{d.architecture}_k{d.k}"
    if d.matryoshka_groups:
        name += "_matryoshka"
    if kind(d.type).per_layer_decoders and d.affine_skip:
        name += "_affine"
    return name


def registry_key(cfg: TrainConfig, layers: list[int]) -> str:
    """The key a run publishes under (``output.key`` wins)."""
    if cfg.output.key:
        return cfg.output.key
    if not cfg.model.id or Path(cfg.model.id).exists():
        raise ValueError("output.key is required when model.id is not a Hub-style id (e.g. a local path)")
    d, site = cfg.dictionary, cfg.site_label
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
    weights = served_weights(cfg.model.id, cfg.model.revision)
    if weights is not None:  # a converted local copy: name the Hub model, say what the weights were
        c.model, c.model_revision = weights["hub_id"], None
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
        model_weights=weights,
    )
    return out


def is_url(location: str) -> bool:
    """True for an fsspec URL other than ``file://`` (those are written through a store)."""
    return "://" in location and not location.startswith("file://")


def _same_as_latest(dictionary: Dictionary, folder: Path, registry: Any, key: str) -> None:
    """If the key's latest version holds these very weights and config (the creation time aside),
    rewrite ``folder`` with that version's creation time, so an identical rerun publishes nothing."""
    from scope_hub.errors import ScopeHubError
    from scope_hub.registry.content import folder_hashes

    try:
        manifest = registry.resolve(key)
    except (ScopeHubError, KeyError):
        return  # nothing published yet (or unreadable: the push reports it)
    published = {e.path: e.sha256 for e in manifest.files}
    ours = folder_hashes(folder)
    if any(published.get(name) != sha for name, sha in ours.items() if name.endswith(".safetensors")):
        return

    def timeless(config: dict) -> dict:
        return {**config, "provenance": {**(config.get("provenance") or {}), "created_at": None}}

    stored = json.loads((folder / "config.json").read_text())
    created_at = (manifest.config.get("provenance") or {}).get("created_at")
    if created_at and timeless(stored) == timeless(manifest.config):
        dictionary.config.provenance.created_at = created_at
        readme = folder / "README.md"
        save_dictionary_folder(dictionary, folder, readme.read_text() if readme.is_file() else None)


def save_dictionary_folder(dictionary: Dictionary, folder: str | Path, card: str | None) -> Path:
    """Save into a local folder (or ``file://`` URL), with ``feature_stats.safetensors`` when evaluation
    measured them."""
    if str(folder).startswith("file://"):
        from scope_hub.registry.backends.file import path_of_url

        folder = path_of_url(str(folder))
    stats = getattr(dictionary, "feature_stats", None)  # measured by trainers.evals.evaluate
    if not isinstance(stats, FeatureStats):
        return dictionary.save_pretrained(folder, card=card)
    # The statistics go into the same staging folder as the weights, so the one rename that
    # publishes the folder brings them too: no reader ever sees the folder without them.
    with atomic_folder(folder) as staging:
        inner = dictionary.save_pretrained(staging / "dictionary", card=card)
        stats.save(inner)
        for path in inner.iterdir():
            path.rename(staging / path.name)
        inner.rmdir()
    return Path(folder)


def save_and_publish(dictionary: Dictionary, cfg: TrainConfig, layers: list[int]) -> tuple[Path | str, Any]:
    """Write ``output.dir`` (config.json, safetensors, README.md card, and ``feature_stats.safetensors``
    when evaluation measured them); push when ``output.registry`` is set.

    A URL ``output.dir`` (``s3://...``) gets the folder's files as one atomic put each. Returns
    ``(folder, PushResult or None)``.
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
    if not is_url(cfg.output.dir):
        folder = save_dictionary_folder(dictionary, cfg.output.dir, card)
        return folder, _push(dictionary, folder, cfg, key)
    from trainers.harvest_shards import open_store

    store = open_store(cfg.output.dir)
    with tempfile.TemporaryDirectory() as staging:
        folder = save_dictionary_folder(dictionary, Path(staging) / "dictionary", card)
        pushed = _push(dictionary, folder, cfg, key)  # first: an unchanged rerun rewrites the folder's created_at
        for path in sorted(folder.iterdir()):  # config.json last: a reader sees it only after the weights
            if path.name != "config.json":
                store.put_file(path.name, path)
        store.put_file("config.json", folder / "config.json")
        return cfg.output.dir, pushed


def _push(dictionary: Dictionary, folder: Path, cfg: TrainConfig, key: str | None) -> Any:
    if not cfg.output.registry or key is None:  # a registry without a key raised above
        return None
    from scope_hub.registry import Registry

    registry = Registry(cfg.output.registry)
    _same_as_latest(dictionary, folder, registry, key)
    return registry.push(folder, key)


def write_metrics_log(output_dir: str, text: str) -> None:
    """(Re)write ``metrics.jsonl`` into an output folder or URL after the dictionary was saved there."""
    from trainers.progress import METRICS_FILE

    if not text:
        return
    if is_url(output_dir):
        from trainers.harvest_shards import open_store

        open_store(output_dir).put_bytes(METRICS_FILE, text.encode())
    else:
        from scope_hub.atomic_files import atomic_write_text
        from scope_hub.registry.backends.file import path_of_url

        atomic_write_text(path_of_url(output_dir) / METRICS_FILE, text)
