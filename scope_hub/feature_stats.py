"""Per-feature activation statistics, so that steering strengths have a unit.

A feature's raw activation scale is arbitrary (it depends on the dictionary, the
site's norm, normalization); "2x the feature's largest activation" or "the mean
activation when it fires" is a unit a researcher can reason about. Training
records these numbers on its evaluation tokens and writes them beside the
weights as ``feature_stats.safetensors``; dictionaries without the file (older
folders, Gemma Scope releases) still load, and :meth:`FeatureStatsAccumulator.add`
measures them on any activations.

Tensors (shape ``[d_sae]``; ``[n_layers, d_sae]`` for cross-layer transcoders):

* ``max``: largest activation seen;
* ``mean_active``: mean activation over the tokens where the feature fires (0 if it never does);
* ``frequency``: fraction of tokens where it fires;

plus scalars ``tokens`` (how many tokens were measured) and ``site_norm`` (mean L2 norm of
the activation at the dictionary's output site, for steering in multiples of it).

Example:
    >>> import tempfile, torch
    >>> acc = FeatureStatsAccumulator(3)
    >>> acc.add(torch.tensor([[0.0, 2.0, 0.0], [1.0, 4.0, 0.0]]), site=torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    >>> stats = acc.result()
    >>> stats.max.tolist(), stats.mean_active.tolist(), stats.frequency.tolist(), stats.site_norm
    ([1.0, 4.0, 0.0], [1.0, 3.0, 0.0], [0.5, 1.0, 0.0], 3.0)
    >>> folder = tempfile.mkdtemp()
    >>> _ = stats.save(folder)
    >>> FeatureStats.load(folder).max.tolist()
    [1.0, 4.0, 0.0]
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scope_hub.errors import ConfigError, WeightsFileError

FILE = "feature_stats.safetensors"
"""File name beside ``config.json`` and ``params.safetensors``."""
_TENSORS = ("max", "mean_active", "frequency")


@dataclass(frozen=True)
class FeatureStats:
    """Activation statistics of every feature of one dictionary (see the module docstring)."""

    max: torch.Tensor
    """Largest activation per feature."""
    mean_active: torch.Tensor
    """Mean activation over the tokens where the feature fires."""
    frequency: torch.Tensor
    """Fraction of measured tokens where the feature fires."""
    tokens: int
    """Number of tokens measured."""
    site_norm: float | None = None
    """Mean L2 norm of the output site's activation over those tokens (None if not measured)."""

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``feature_stats.safetensors`` into ``folder`` (temporary name, then rename)."""
        folder = Path(folder)
        # One metadata entry: safetensors writes several in hash order, so equal statistics would
        # not give equal bytes (and an identical re-publish would look like new content).
        scalars = {"tokens": int(self.tokens), "site_norm": None if self.site_norm is None else float(self.site_norm)}
        metadata = {"scalars": json.dumps(scalars, sort_keys=True)}
        tensors = {name: getattr(self, name).detach().float().cpu().contiguous() for name in _TENSORS}
        handle, temp = tempfile.mkstemp(prefix=f".{FILE}.", dir=folder)
        os.close(handle)
        try:
            save_file(tensors, temp, metadata=metadata)
            os.chmod(temp, 0o644)
            os.replace(temp, folder / FILE)
        finally:
            if os.path.exists(temp):
                os.unlink(temp)
        return folder / FILE

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> FeatureStats | None:
        """The statistics stored in ``folder``, or None when it has none."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in _TENSORS}
            if "scalars" in metadata:
                metadata = json.loads(metadata["scalars"])
            site_norm = metadata.get("site_norm")
            return cls(
                **tensors, tokens=int(metadata.get("tokens", 0)), site_norm=float(site_norm) if site_norm else None
            )
        except Exception as exc:  # safetensors raises its own error types for truncated files and missing names
            raise WeightsFileError(
                f"{path}: unreadable feature statistics ({type(exc).__name__}: {exc}); delete the file "
                "(steering then works in raw activation units) or record it again"
            ) from None

    def check_width(self, d_sae: int, where: str) -> None:
        """Raise :class:`ConfigError` unless these statistics describe ``d_sae`` features."""
        if self.max.shape[-1] != d_sae:
            raise ConfigError(
                f"{where}: {FILE} describes {self.max.shape[-1]} features but the dictionary has {d_sae}; "
                "record the statistics again for this dictionary"
            )


class FeatureStatsAccumulator:
    """Running per-feature statistics over batches of features ``[tokens, d_sae]`` (or ``[tokens, n_layers, d_sae]``)."""

    def __init__(self, d_sae: int, n_layers: int | None = None) -> None:
        shape = (d_sae,) if n_layers is None else (n_layers, d_sae)
        self.max = torch.full(shape, float("-inf"), dtype=torch.float64)
        self.active_sum = torch.zeros(shape, dtype=torch.float64)
        self.active_count = torch.zeros(shape, dtype=torch.float64)
        self.tokens = 0
        self.norm_sum = 0.0
        self.norm_tokens = 0

    @torch.no_grad()
    def add(self, features: torch.Tensor, site: torch.Tensor | None = None) -> None:
        """Add ``features`` (one row per token); ``site``: the output site's activations of the same tokens."""
        f = features.detach().double().reshape(-1, *self.max.shape)
        active = f != 0
        self.max = torch.maximum(self.max, f.amax(0))
        self.active_sum += torch.where(active, f, 0.0).sum(0)
        self.active_count += active.sum(0)
        self.tokens += f.shape[0]
        if site is not None:
            self.norm_sum += float(site.detach().double().reshape(f.shape[0], -1).norm(dim=-1).sum())
            self.norm_tokens += f.shape[0]

    def result(self) -> FeatureStats:
        """The statistics so far (``ConfigError`` before any token was added)."""
        if not self.tokens:
            raise ConfigError("no tokens were measured; add at least one batch of features")
        mean_active = self.active_sum / self.active_count.clamp_min(1)
        return FeatureStats(
            max=self.max.float(),
            mean_active=mean_active.float(),
            frequency=(self.active_count / self.tokens).float(),
            tokens=self.tokens,
            site_norm=self.norm_sum / self.norm_tokens if self.norm_tokens else None,
        )
