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
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scope_hub.atomic_files import atomic_folder
from scope_hub.config_io import CONFIG_FILE
from scope_hub.errors import NonFiniteWeightsError
from scope_hub.tensor_layout import TensorSpec, check_tensors  # noqa: F401  (re-exported)


def write_folder(
    folder: Path | str,
    config: Mapping,
    files: Mapping[str, Mapping[str, torch.Tensor]],
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Atomically write ``config.json``, safetensors files and text files into ``folder``.

    An existing folder is replaced only after the new one is complete.
    """
    with atomic_folder(folder) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name, tensors in files.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(staging / name))
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return Path(folder)


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
    handles: dict[str, Any] = {}
    try:
        for spec in specs:
            if spec.file not in handles:
                handles[spec.file] = safe_open(str(folder / spec.file), framework="pt", device="cpu")
            tensor = spec.to_module(handles[spec.file].get_tensor(spec.name))
            check_finite(folder / spec.file, spec.name, tensor, allow_nonfinite=allow_nonfinite)
            out[spec.attr] = tensor.to(device=device or "cpu", dtype=dtype or tensor.dtype)
    finally:
        handles.clear()
    return out


def is_finite(tensor: torch.Tensor) -> bool:
    """No NaN or inf in ``tensor`` (non-float tensors always pass).

    A NaN or inf anywhere makes the sum non-finite, so one reduction clears the common case
    (~20x cheaper than a full isfinite pass); a sum that merely overflows is re-checked.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite(where: Path | str, name: str, tensor: torch.Tensor, *, allow_nonfinite: bool = False) -> None:
    """Refuse NaN/inf in tensor ``name`` (read from ``where``) with :class:`NonFiniteWeightsError`,
    or only warn when ``allow_nonfinite``: the one rule for native and converted folders alike."""
    if not is_finite(tensor):
        message = f"{where}: tensor '{name}' contains NaN or inf"
        if not allow_nonfinite:
            raise NonFiniteWeightsError(
                message + "; pass allow_nonfinite=True to load it anyway (with a warning)", path=str(where), tensor=name
            )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
