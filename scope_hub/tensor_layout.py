"""Which tensors a dictionary of a given config stores, with names and shapes — torch-free.

The single source of truth for the on-disk layout (Gemma Scope 2 names): the
dictionary classes build their parameters from it, loading checks files
against it, and the registry validates a folder at push without importing torch.

Example:
    >>> from scope_hub.metadata import DictionaryConfig
    >>> cfg = DictionaryConfig(type="skip_transcoder", architecture="jumprelu", d_in=4, d_sae=8, d_out=6)
    >>> [(s.name, s.shape) for s in tensor_specs(cfg)]  # doctest: +NORMALIZE_WHITESPACE
    [('w_enc', (4, 8)), ('b_enc', (8,)), ('threshold', (8,)), ('w_dec', (8, 6)), ('b_dec', (6,)),
     ('affine_skip_connection', (4, 6))]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from scope_hub.config_io import TensorInfo, read_config, read_safetensors_header
from scope_hub.errors import ShapeMismatchError
from scope_hub.file_checks import CHECKS
from scope_hub.kinds import architecture, kind
from scope_hub.metadata import DictionaryConfig

PARAMS_FILE = "params.safetensors"


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
    """Dotted attribute path of the parameter in the module (``w_enc``, ``per_layer.3.w_enc``)."""
    latent_axis: int | None
    """Axis of length d_sae, for Matryoshka truncation; None if the tensor has none."""
    stored_shape: tuple[int, ...] | None = None
    """Shape on disk when it differs from the module's (the module keeps a slice of it)."""
    stored_start: tuple[int, int] | None = None
    """(axis, start) of the module's slice inside the stored tensor; the rest is stored as zeros."""

    def to_module(self, tensor):
        """The module's view of a tensor read from disk (either layout accepted)."""
        if self.stored_shape is not None and tuple(tensor.shape) == self.stored_shape:
            axis, start = self.stored_start
            return tensor.narrow(axis, start, self.shape[axis])
        return tensor

    def to_stored(self, tensor):
        """The on-disk form of a module tensor: zero-padded into ``stored_shape``."""
        if self.stored_shape is None:
            return tensor
        axis, start = self.stored_start
        padded = tensor.new_zeros(self.stored_shape)
        padded.narrow(axis, start, self.shape[axis]).copy_(tensor)
        return padded


def clt_layer_file(i: int) -> str:
    """File of CLT source layer ``i`` (Gemma Scope 2: ``params_layer_{i}.safetensors``)."""
    return f"params_layer_{i}.safetensors"


def single_layer_specs(
    config: DictionaryConfig, file: str, prefix: str, d_dec: tuple[int, ...] = ()
) -> list[TensorSpec]:
    """Specs of one encoder/decoder block (SAE, transcoders, one CLT layer)."""
    d_in, d_sae, d_out = config.d_in, config.d_sae, config.d_out
    specs = [
        TensorSpec(file, "w_enc", (d_in, d_sae), f"{prefix}w_enc", 1),
        TensorSpec(file, "b_enc", (d_sae,), f"{prefix}b_enc", 0),
    ]
    if architecture(config.architecture).stores_threshold:
        specs.append(TensorSpec(file, "threshold", (d_sae,), f"{prefix}threshold", 0))
    specs += [
        TensorSpec(file, "w_dec", (d_sae, *d_dec, d_out), f"{prefix}w_dec", 0),
        TensorSpec(file, "b_dec", (d_out,), f"{prefix}b_dec", None),
    ]
    if config.affine_skip:
        specs.append(TensorSpec(file, "affine_skip_connection", (d_in, d_out), f"{prefix}affine_skip_connection", None))
    return specs


def clt_specs(config: DictionaryConfig) -> list[TensorSpec]:
    """Per source layer i, the module's w_dec is ``[d_sae, n_layers - i, d_out]`` (decoders to layers i..n-1).

    On disk it is ``[d_sae, n_layers, d_out]`` with zeros for the layers before i, as Gemma Scope 2
    publishes it (circuit-tracer's loader stacks the layer files and slices ``w_dec[i, :, i:]``);
    the compact form is accepted when reading too.
    """
    n = config.n_layers
    specs = []
    for i in range(n):
        for spec in single_layer_specs(config, clt_layer_file(i), f"per_layer.{i}.", (n - i,)):
            if spec.name == "w_dec":
                spec = replace(spec, stored_shape=(config.d_sae, n, config.d_out), stored_start=(1, i))
            specs.append(spec)
    return specs


def crosscoder_specs(config: DictionaryConfig) -> list[TensorSpec]:
    """Shared latents over ``n_layers`` stacked sites."""
    n, d_in, d_sae, d_out = config.n_layers, config.d_in, config.d_sae, config.d_out
    specs = [
        TensorSpec(PARAMS_FILE, "w_enc", (n, d_in, d_sae), "w_enc", 2),
        TensorSpec(PARAMS_FILE, "b_enc", (d_sae,), "b_enc", 0),
    ]
    if architecture(config.architecture).stores_threshold:
        specs.append(TensorSpec(PARAMS_FILE, "threshold", (d_sae,), "threshold", 0))
    return [
        *specs,
        TensorSpec(PARAMS_FILE, "w_dec", (d_sae, n, d_out), "w_dec", 0),
        TensorSpec(PARAMS_FILE, "b_dec", (n, d_out), "b_dec", None),
    ]


def tensor_specs(config: DictionaryConfig) -> list[TensorSpec]:
    """Every tensor a dictionary with ``config`` stores."""
    layout = kind(config.type).layout
    if layout == "cross_layer":
        return clt_specs(config)
    if layout == "stacked":
        return crosscoder_specs(config)
    return single_layer_specs(config, PARAMS_FILE, prefix="")


def check_tensors(folder: Path, specs: list[TensorSpec], dtype: str) -> None:
    """Refuse missing, unexpected, mis-shaped or mis-typed tensors, naming file and tensor.

    A passing check is remembered by the files' identities (:mod:`scope_hub.file_checks`).
    """
    files = sorted({spec.file for spec in specs})
    CHECKS.get_or_run(
        [folder / file for file in files],
        ("tensors", tuple(specs), dtype),
        lambda: _check_tensors(folder, specs, dtype),
    )


def _check_tensors(folder: Path, specs: list[TensorSpec], dtype: str) -> bool:
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
    return True


def _check_one(path: Path, spec: TensorSpec, info: TensorInfo | None, dtype: str) -> None:
    if info is None:
        raise ShapeMismatchError(
            f"{path}: tensor '{spec.name}' is missing; re-export the dictionary", path=path, tensor=spec.name
        )
    if info.shape not in (spec.shape, spec.stored_shape):
        implied = list(spec.stored_shape or spec.shape)
        raise ShapeMismatchError(
            f"{path}: tensor '{spec.name}' has shape {list(info.shape)} but config.json implies "
            f"{implied}; fix d_in/d_sae/d_out in config.json or re-export",
            path=path,
            tensor=spec.name,
            expected=tuple(implied),
            actual=info.shape,
        )
    if info.dtype != dtype:
        raise ShapeMismatchError(
            f"{path}: tensor '{spec.name}' is {info.dtype} but config.json says dtype {dtype}; fix the config's dtype"
        )


def check_folder(folder: Path | str) -> DictionaryConfig:
    """Validate a dictionary folder's config and every tensor header without torch; returns the config.

    Example:
        >>> import json, tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "config.json").write_text(json.dumps(
        ...     {"type": "sae", "architecture": "relu", "d_in": 4, "d_sae": 8, "schema_version": 1}))
        >>> check_folder(folder)
        Traceback (most recent call last):
        ...
        scope_hub.errors.DictionaryNotFoundError: .../params.safetensors: weights file not found; ...
    """
    folder = Path(folder)
    config = read_config(folder)
    check_tensors(folder, tensor_specs(config), config.dtype)
    return config
