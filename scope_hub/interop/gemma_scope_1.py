"""Gemma Scope (1): ``layer_{L}/width_{W}/average_l0_{N}/params.npz`` folders, and whole releases.

Release repos ``google/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att,transcoders}`` map to model
``google/gemma-2-{size}[-it]`` and site resid_post (``res``), mlp_out (``mlp``), attn_out
(``att``: Gemma 2 attention SAEs read hook_z, the input of ``o_proj``) or a transcoder (key site
``mlp``: reads ``pre_feedforward_layernorm.output``, writes ``post_feedforward_layernorm.output``).
The npz holds ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_out]``, ``b_enc``, ``b_dec``,
``threshold``; it is read with ``np.load(..., allow_pickle=False)``. Key:
``{model}:{site}/layer_{L}/width_{W}/{sae|transcoder}/average_l0_{N}``.

Exports write ``params.npz`` (float32) plus ``scope_hub_config.json``, a sidecar holding our
config (Gemma Scope 1 has no config file; its readers ignore the sidecar).

Example:
    >>> repo_facts("google/gemma-scope-2b-pt-att")
    ('google/gemma-2-2b', 'attn_out', 'sae')
    >>> parse_folder("layer_3/width_16k/average_l0_59")
    (3, '16k', 'average_l0_59')
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scope_hub.config_io import validate_config
from scope_hub.dictionaries import Dictionary
from scope_hub.errors import DictionaryNotFoundError, FormatError
from scope_hub.interop.common import (
    SIDECAR,
    atomic_folder,
    embed,
    exported,
    finish_load,
    read_json,
    read_numeric_npz,
    write_json,
)
from scope_hub.interop.gemma_scope_2 import gemma_hook_points
from scope_hub.interop.release import (
    GEMMA_SCOPE_LICENSE,
    ImportReport,
    Planned,
    ReleaseSource,
    digest_files,
    folders_of,
    publish,
)
from scope_hub.keys import DictionaryKey
from scope_hub.kinds import JUMPRELU, SAE, TRANSCODER

NAME = "gemma-scope-1"
FILES = "params.npz (W_enc, W_dec, b_enc, b_dec, threshold)"
SUPPORTED = {SAE: (JUMPRELU,), TRANSCODER: (JUMPRELU,)}
_SITES = {
    "res": ("resid_post", "sae"),
    "mlp": ("mlp_out", "sae"),
    "att": ("attn_out", "sae"),
    "transcoders": ("mlp", "transcoder"),
}
_REPO_RE = re.compile(r"^(?:google/)?gemma-scope-(?P<size>\d+b)-(?P<kind>pt|it)-(?P<site>res|mlp|att|transcoders)$")
_FOLDER_RE = re.compile(r"^layer_(?P<layer>\d+)/width_(?P<width>[1-9]\d*[km]?)/(?P<variant>average_l0_\d+)$")
_NPZ_NAMES = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}


def repo_facts(repo_id: str | None) -> tuple[str, str, str] | None:
    """(model id, key site, type) of a Gemma Scope release repo, or None if not one."""
    match = _REPO_RE.match(repo_id or "")
    if not match:
        return None
    model = f"google/gemma-2-{match['size']}" + ("-it" if match["kind"] == "it" else "")
    return (model, *_SITES[match["site"]])


def parse_folder(rel: str) -> tuple[int, str, str]:
    """(layer, width label, variant) of ``layer_L/width_W/average_l0_N``; FormatError otherwise."""
    match = _FOLDER_RE.match(rel.strip("/"))
    if not match:
        raise FormatError(f"{rel}: unexpected folder; expected layer_<L>/width_<W>/average_l0_<N>")
    return int(match["layer"]), match["width"], match["variant"]


def detect(folder: Path) -> bool:
    """A folder holding ``params.npz``."""
    return (Path(folder) / "params.npz").is_file()


def _read_npz(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise DictionaryNotFoundError(f"{path}: params.npz not found")
    arrays = read_numeric_npz(path)
    unknown = sorted(set(arrays) - set(_NPZ_NAMES))
    if unknown:
        raise FormatError(f"{path}: unexpected arrays {unknown}; expected {sorted(_NPZ_NAMES)}")
    return {_NPZ_NAMES[k]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def _context(folder: Path) -> tuple[tuple[str, str, str] | None, tuple[int, str, str] | None]:
    """(repo facts, folder facts) from the path of a folder inside a downloaded release."""
    parts = folder.resolve().parts
    facts = None
    for part in reversed(parts[:-3]):
        name = re.sub(r"^models--google--", "", part)
        facts = facts or repo_facts(name)
    try:
        where = parse_folder("/".join(parts[-3:]))
    except FormatError:
        where = None
    return facts, where


def _path_fields(site: str, layer: int, width: str, variant: str) -> dict[str, Any]:
    """Config fields a release folder's path (``layer_L/width_W/average_l0_N``) and key site give."""
    hook_in, hook_out = gemma_hook_points(site, layer)
    return dict(
        layer=layer,
        width_label=width,
        variant=variant,
        hook_point_in=hook_in,
        hook_point_out=hook_out,
        site="mlp_in" if site == "mlp" else site,
        site_out="mlp_out" if site == "mlp" else None,
    )


def load(
    folder: Path,
    *,
    allow_nonfinite: bool = False,
    repo_id: str | None = None,
    model: str | None = None,
    source_uri: str | None = None,
) -> Dictionary:
    """A Gemma Scope 1 folder; model/site/layer come from ``repo_id`` and the folder path when known.
    NaN/inf weights are refused (:class:`~scope_hub.errors.NonFiniteWeightsError`) unless ``allow_nonfinite``.
    """
    folder = Path(folder)
    tensors = _read_npz(folder / "params.npz")
    facts, where = _context(folder)
    facts = repo_facts(repo_id) or facts
    if "w_enc" not in tensors or "w_dec" not in tensors or tensors["w_enc"].ndim != 2:
        raise FormatError(f"{folder / 'params.npz'}: needs W_enc [d_in, d_sae] and W_dec [d_sae, d_out]")
    d_in, d_sae = tensors["w_enc"].shape
    d_out = tensors["w_dec"].shape[-1]
    site, type_ = (facts[1], facts[2]) if facts else (None, "sae" if d_out == d_in else "transcoder")
    fields: dict[str, Any] = dict(
        type=type_,
        architecture="jumprelu",
        d_in=d_in,
        d_sae=d_sae,
        d_out=d_out,
        model=model or (facts[0] if facts else None),
        provenance={"source": "gemma-scope-1", "source_uri": source_uri or str(folder)},
    )
    if site is not None and where is not None:
        fields.update(_path_fields(site, *where))
    sidecar = read_json(folder / SIDECAR, SIDECAR) if (folder / SIDECAR).is_file() else None
    files = {"params.safetensors": tensors}
    config = validate_config(fields, str(folder))
    source = str(folder / SIDECAR)
    return finish_load(config, files, sidecar, where=str(folder), source=source, allow_nonfinite=allow_nonfinite)


def save(dictionary: Dictionary, out: Path) -> Path:
    """``params.npz`` (float32) + the :data:`SIDECAR` config."""
    config, files = exported(dictionary, NAME, SUPPORTED)
    tensors = next(iter(files.values()))
    # Any, not ndarray: numpy's stub for savez would otherwise match these arrays against allow_pickle.
    arrays: dict[str, Any] = {theirs: tensors[ours].float().numpy() for theirs, ours in _NPZ_NAMES.items()}
    with atomic_folder(out) as stage:
        np.savez(stage / "params.npz", **arrays)
        write_json(stage / SIDECAR, embed(config.model_copy(update={"dtype": "float32"})))
    return Path(out)


# --- whole releases ------------------------------------------------------------------------------


def plan_release(
    source: ReleaseSource, *, model: str | None = None, site: str | None = None, include: list[str] | None = None
) -> list[Planned]:
    """One :class:`Planned` per ``layer_L/width_W/average_l0_N`` folder of the release."""
    import fnmatch

    facts = repo_facts(source.repo_id)
    model = model or (facts[0] if facts else None)
    site_and_type = (site, "transcoder" if site == "mlp" else "sae") if site else (facts[1:] if facts else None)
    if model is None or site_and_type is None:
        raise FormatError(
            f"{source.name}: not a Gemma Scope repo name (gemma-scope-<size>-<pt|it>-<res|mlp|att|"
            "transcoders>); pass repo_id=, or model= and site="
        )
    key_site, type_ = site_and_type
    repo = source.repo_id if facts else None
    plan = []
    by_depth = folders_of(source.files(), 3)
    for rel in sorted(by_depth):
        if include and not any(fnmatch.fnmatch(rel, p) for p in include):
            continue
        try:
            layer, width, variant = parse_folder(rel)
        except FormatError as exc:
            plan.append(Planned(rel, None, error=str(exc)))
            continue
        key = DictionaryKey(model, key_site, layer, width, type_, variant)
        digest = functools.partial(_npz_digest, source, rel)
        plan.append(Planned(rel, key, _builder(source, rel, repo, model, key_site), digest))
    return plan


def _npz_digest(source: ReleaseSource, rel: str) -> str:
    return digest_files(source.fetch(rel), ["params.npz"])


def _builder(source: ReleaseSource, rel: str, repo_id: str | None, model: str, site: str):
    def build(stage: Path, key: DictionaryKey) -> None:
        module = load(source.fetch(rel), repo_id=repo_id, model=model, source_uri=source.uri(rel))
        if repo_id is None:  # site given explicitly: set what the path could not say
            module.config = module.config.model_copy(update=_path_fields(site, *parse_folder(rel)))
        module.save_pretrained(stage)

    return build


# Parallel to gemma_scope_2.import_gemma_scope_2: one importer interface, each over its own planner.
def import_gemma_scope_1(
    source: str | Path,
    registry: Any,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    model: str | None = None,
    site: str | None = None,
    include: list[str] | None = None,
    dry_run: bool = False,
    progress: bool | None = None,
    license: str = GEMMA_SCOPE_LICENSE,
) -> ImportReport:
    """Publish every dictionary of a Gemma Scope (1) release repo or local folder to ``registry``.

    Same behaviour as :func:`scope_hub.interop.gemma_scope_2.import_gemma_scope_2`. A local
    folder not named after its repo needs ``repo_id=`` (or ``model=`` and ``site=``, with site
    ``mlp`` meaning transcoders).
    """
    src = ReleaseSource(source, revision=revision, repo_id=repo_id)
    return publish(
        src.name,
        plan_release(src, model=model, site=site, include=include),
        registry,
        dry_run=dry_run,
        progress=progress,
        license=license,
    )
