"""Save and load the native folder format: the one place that touches weight files.

A dictionary folder is ``config.json`` + ``params.safetensors`` (CLT: one
``params_layer_{i}.safetensors`` per layer), tensor names as Gemma Scope 2.
Writes go to a temporary sibling folder that is renamed into place, so a crash
never leaves a half-written dictionary. Loads check every tensor's name, shape
and dtype against the config before a byte of data is read, and refuse NaN/inf.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp()) / "d"
    >>> _ = write_folder(folder, {"schema_version": 1}, {"params.safetensors": {"w": torch.ones(2)}})
    >>> sorted(p.name for p in folder.iterdir())
    ['config.json', 'params.safetensors']
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scope_hub.config_io import CONFIG_FILE, TensorInfo, read_safetensors_header
from scope_hub.errors import NonFiniteWeightsError, ShapeMismatchError


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor lives on disk and in the module, and its expected shape."""

    file: str
    """File name inside the folder (``params.safetensors``)."""
    name: str
    """Tensor name inside the file (``w_enc``)."""
    shape: tuple[int, ...]
    """Expected shape."""
    attr: str
    """Dotted attribute path of the parameter in the module (``w_enc``, ``layers.3.w_enc``)."""
    latent_axis: int | None
    """Axis of length d_sae, for Matryoshka truncation; None if the tensor has none."""


def write_folder(
    folder: Path | str,
    config: Mapping,
    files: Mapping[str, Mapping[str, torch.Tensor]],
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Atomically write ``config.json``, safetensors files and text files into ``folder``.

    An existing folder is replaced only after the new one is complete.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, tensors in files.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / name))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
        _swap_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _swap_into_place(staging: Path, folder: Path) -> None:
    if not folder.exists():
        os.rename(staging, folder)
        return
    retired = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.rename(folder, retired)
    os.rename(staging, folder)
    shutil.rmtree(retired, ignore_errors=True)


def check_tensors(folder: Path, specs: list[TensorSpec], dtype: str) -> None:
    """Refuse missing, unexpected, mis-shaped or mis-typed tensors, naming file and tensor."""
    by_file: dict[str, list[TensorSpec]] = {}
    for spec in specs:
        by_file.setdefault(spec.file, []).append(spec)
    for file, file_specs in by_file.items():
        header = read_safetensors_header(folder / file)
        expected = {spec.name for spec in file_specs}
        extra = sorted(set(header) - expected)
        if extra:
            raise ShapeMismatchError(
                f"{folder / file}: unexpected tensors {extra}; expected exactly {sorted(expected)} for this config"
            )
        for spec in file_specs:
            _check_one(folder / file, spec, header.get(spec.name), dtype)


def _check_one(path: Path, spec: TensorSpec, info: TensorInfo | None, dtype: str) -> None:
    if info is None:
        raise ShapeMismatchError(f"{path}: tensor '{spec.name}' is missing; re-export the dictionary")
    if info.shape != spec.shape:
        raise ShapeMismatchError(
            f"{path}: tensor '{spec.name}' has shape {list(info.shape)} but config.json implies "
            f"{list(spec.shape)}; fix d_in/d_sae/d_out in config.json or re-export"
        )
    if info.dtype != dtype:
        raise ShapeMismatchError(
            f"{path}: tensor '{spec.name}' is {info.dtype} but config.json says dtype {dtype}; fix the config's dtype"
        )


def load_tensors(
    folder: Path,
    specs: list[TensorSpec],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> dict[str, torch.Tensor]:
    """Read tensors by spec, keyed by ``spec.attr``; NaN/inf raise unless ``allow_nonfinite`` (then warn)."""
    out: dict[str, torch.Tensor] = {}
    handles: dict[str, object] = {}
    try:
        for spec in specs:
            if spec.file not in handles:
                handles[spec.file] = safe_open(str(folder / spec.file), framework="pt", device="cpu")
            tensor = handles[spec.file].get_tensor(spec.name)
            _check_finite(folder / spec.file, spec.name, tensor, allow_nonfinite)
            out[spec.attr] = tensor.to(device=device or "cpu", dtype=dtype or tensor.dtype)
    finally:
        handles.clear()
    return out


def _check_finite(path: Path, name: str, tensor: torch.Tensor, allow_nonfinite: bool) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        message = f"{path}: tensor '{name}' contains NaN or inf"
        if not allow_nonfinite:
            raise NonFiniteWeightsError(message + "; pass allow_nonfinite=True to load it anyway (with a warning)")
        warnings.warn(message, RuntimeWarning, stacklevel=3)
