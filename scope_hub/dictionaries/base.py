"""The :class:`Dictionary` base: parameters, normalization, lazy loading, save/load.

Kinds (SAE, transcoder, skip transcoder, CLT, crosscoder) subclass it, one per
file, and declare their tensors through :meth:`Dictionary.tensor_specs`; the
math of each activation function lives in a strategy object
(:mod:`scope_hub.dictionaries.activation`). Everything shared (building
parameters, checking files, memory-light lazy loading, Matryoshka truncation,
``save_pretrained``/``from_pretrained``) is written once here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from scope_hub.config_io import read_config
from scope_hub.dictionaries.activation import Activation
from scope_hub.errors import ConfigError, DictionaryNotFoundError
from scope_hub.kinds import kind
from scope_hub.metadata import DictionaryConfig
from scope_hub.serialization import load_tensors, write_folder
from scope_hub.tensor_layout import TensorSpec, check_tensors


class Dictionary(nn.Module):
    """A learned sparse basis attached to a model site. Subclasses define the math.

    Construct with a config for fresh parameters (random unit directions, see
    :meth:`reset_parameters`), or load with
    :meth:`from_pretrained`. Inputs may have any leading shape ``[..., d_in]``;
    computation happens in the parameters' dtype and device.
    """

    type: ClassVar[str]  # type: ignore[assignment]  # the kind's name; shadows nn.Module.type(dtype), unused here

    def __init__(
        self,
        config: DictionaryConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        from scope_hub.dictionaries.kinds import ACTIVATIONS

        if config.type != self.type:
            raise ConfigError(f"config type {config.type!r} given to {type(self).__name__} (type {self.type!r})")
        self._pending_load: Callable[[], dict[str, torch.Tensor]] | None = None
        self.config = config
        self.activation: Activation = ACTIVATIONS[config.architecture](config.k)
        dtype = dtype or getattr(torch, config.dtype)
        self._make_holders(config)
        for spec in self.tensor_specs(config):
            self._set_param(spec.attr, nn.Parameter(torch.empty(spec.shape, device=device, dtype=dtype)))
        if torch.device(device or "cpu").type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Give every parameter a usable starting value; the constructor does this, as ``nn.Linear`` does.

        Decoder and encoder directions are random unit vectors, one per latent; biases, thresholds
        and skip weights start at zero (a JumpReLU then acts as a ReLU). The directions come from
        ``generator``, else torch's global RNG (seed it for reproducible fresh dictionaries, as
        with ``nn.Linear``), drawn on the parameters' device. Trainers apply their own
        recipe on top (``trainers.params.init_dictionary``). Loading never pays for this: weights
        read from disk replace placeholders built on the meta device.

        Example:
            >>> from scope_hub.dictionaries import SAE
            >>> from scope_hub.metadata import DictionaryConfig
            >>> sae = SAE(DictionaryConfig(type="sae", architecture="jumprelu", d_in=4, d_sae=8))
            >>> sae.reset_parameters(torch.Generator().manual_seed(0))
            >>> [round(float(n), 4) for n in sae.w_dec.detach().norm(dim=1)[:2]], float(sae.threshold.detach().sum())
            ([1.0, 1.0], 0.0)
        """
        for spec in self.tensor_specs(self.config):
            param = self.get_parameter(spec.attr)
            if spec.name in ("w_enc", "w_dec"):
                device = generator.device if generator is not None else param.device
                direction = torch.randn(param.shape, generator=generator, device=device, dtype=param.dtype)
                other_axes = [a for a in range(direction.ndim) if a != spec.latent_axis]
                param.copy_(direction / direction.norm(dim=other_axes, keepdim=True))
            else:
                param.zero_()

    # --- what subclasses declare -------------------------------------------------------
    @classmethod
    def tensor_specs(cls, config: DictionaryConfig) -> list[TensorSpec]:
        """Every tensor of this kind for ``config``: file, name, shape, module attribute."""
        raise NotImplementedError

    def _make_holders(self, config: DictionaryConfig) -> None:
        """Create submodules that parameters with dotted ``attr`` paths live in (none by default)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense features ``[..., d_sae]`` of inputs ``[..., d_in]``."""
        raise NotImplementedError

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Reconstruction/prediction from features (dense or :class:`SparseFeatures`)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The dictionary's output for ``x`` (reconstruction for SAEs, prediction for transcoders)."""
        return self.decode(self.encode(x)).to(x.dtype)

    def error(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``target - forward(x)``; ``target`` defaults to ``x`` for kinds that reconstruct their input."""
        if target is None:
            if not kind(self.config.type).reconstructs_input:
                raise ConfigError(f"a {self.type} predicts another site than it reads: pass target=")
            target = x
        return target - self.forward(x)

    # --- shared machinery --------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        """Number of latents."""
        return self.config.d_sae

    def _set_param(self, attr: str, value: nn.Parameter) -> None:
        owner_path, _, name = attr.rpartition(".")
        owner = self.get_submodule(owner_path) if owner_path else self
        owner.register_parameter(name, value)

    def _param(self, attr: str) -> torch.Tensor:
        return self.get_parameter(attr)

    def __getattr__(self, name: str) -> Any:
        # Parameters are reached through nn.Module.__getattr__; load lazily on first touch.
        if self.__dict__.get("_pending_load") is not None:
            self._ensure_loaded()
        return super().__getattr__(name)

    def _normalize_in(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.config.normalization
        return x * norm.scale_in if norm.kind == "constant_scale" else x

    def _denormalize_out(self, y: torch.Tensor) -> torch.Tensor:
        norm = self.config.normalization
        return y / norm.scale_out if norm.kind == "constant_scale" else y

    def _ensure_loaded(self) -> None:
        if self._pending_load is not None:
            loader, self._pending_load = self._pending_load, None
            for attr, tensor in loader().items():
                self._set_param(attr, nn.Parameter(tensor, requires_grad=False))

    def move_keeping_lazy(self, device: torch.device | str, dtype: torch.dtype) -> None:
        """``self.to(device, dtype)``, keeping a lazily loaded dictionary lazy.

        ``Module.to`` makes a lazy dictionary read (and check) all its weights, so attaching
        18 layer SAEs would read every byte up front. Instead the move is chained onto the
        pending load and applied when the weights are first touched; the meta placeholders
        take the target dtype now so dtype queries agree before and after loading.
        """
        load = self.__dict__.get("_pending_load")
        if load is None:
            self.to(device=device, dtype=dtype)
            return

        def load_moved() -> dict[str, torch.Tensor]:
            return {
                attr: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                for attr, t in load().items()
            }

        self._pending_load = load_moved
        if any(p.is_floating_point() and p.dtype != dtype for p in self.parameters()):
            nn.Module._apply(self, lambda t: t.to(dtype=dtype) if t.is_floating_point() else t)

    def _apply(self, fn: Callable, recurse: bool = True) -> Dictionary:  # .to(), .cuda(), .half() ...
        self._ensure_loaded()
        return super()._apply(fn, recurse)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]  # same overloads, passed through
        self._ensure_loaded()
        return super().state_dict(*args, **kwargs)

    @property
    def is_loaded(self) -> bool:
        """False while a lazily loaded dictionary has not read its weights yet."""
        return self._pending_load is None

    def tensors_by_file(self, stored: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """Parameters grouped per file: ``{file: {name: tensor}}``, in their on-disk layout
        (``stored=False``: the module's layout, e.g. a CLT's compact ``w_dec``)."""
        self._ensure_loaded()
        files: dict[str, dict[str, torch.Tensor]] = {}
        for spec in self.tensor_specs(self.config):
            tensor = self.get_parameter(spec.attr).detach()
            files.setdefault(spec.file, {})[spec.name] = spec.to_stored(tensor) if stored else tensor
        return files

    def save_pretrained(self, folder: Path | str, *, card: str | None = None) -> Path:
        """Write ``config.json`` + safetensors (Gemma Scope 2 names) atomically to ``folder``.

        Example:
            >>> import tempfile, torch
            >>> from scope_hub.dictionaries import SAE, Dictionary
            >>> from scope_hub.metadata import DictionaryConfig
            >>> sae = SAE(DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=8))
            >>> _ = sae.apply(lambda m: [torch.nn.init.normal_(p) for p in m.parameters(recurse=False)])
            >>> path = sae.save_pretrained(tempfile.mkdtemp() + "/sae")
            >>> torch.equal(Dictionary.from_pretrained(path).w_enc, sae.w_enc)
            True
        """
        stored_dtype = str(next(iter(self.tensors_by_file().values()))["w_enc"].dtype).removeprefix("torch.")
        config = self.config.model_copy(update={"dtype": stored_dtype})
        extra = {"README.md": card} if card else None
        return write_folder(folder, config.model_dump(mode="json"), self.tensors_by_file(), extra)

    @classmethod
    def from_pretrained(
        cls,
        folder: Path | str,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        lazy: bool = False,
        matryoshka_groups: int | None = None,
        allow_nonfinite: bool = False,
    ) -> Dictionary:
        """Load a dictionary folder (ours or Gemma Scope 2's as published), local or on the Hub
        (``hf://ORG/REPO/FOLDER[@revision]``; other layouts: :func:`scope_hub.load_dictionary`).

        ``lazy`` (default False, as every scope-hub loader): True checks the files now (config,
        header, names, shapes) but reads tensor data only on first use, so a NaN or a corrupt
        tensor surfaces there rather than here.
        ``matryoshka_groups=n`` keeps only the first ``n`` nested latent groups.
        NaN/inf weights raise :class:`~scope_hub.errors.NonFiniteWeightsError` unless
        ``allow_nonfinite`` (then a warning is issued).
        """
        from scope_hub.dictionaries.kinds import KINDS
        from scope_hub.registry.backends.hf_folders import fetch_hub_folder, is_hub_folder

        if is_hub_folder(folder):  # hf://ORG/REPO/FOLDER[@rev]: only that folder is downloaded
            folder = fetch_hub_folder(str(folder))[0]
        folder = Path(folder)
        if not folder.is_dir():
            raise DictionaryNotFoundError(f"{folder}: no such dictionary folder", path=folder)
        config = read_config(folder)
        kind = KINDS[config.type]
        if cls is not Dictionary and not issubclass(kind, cls):
            raise ConfigError(f"{folder}: holds a {config.type}, not a {cls.__name__}; use Dictionary.from_pretrained")
        specs = kind.tensor_specs(config)
        check_tensors(folder, specs, config.dtype)

        def loader() -> dict[str, torch.Tensor]:
            return load_tensors(folder, specs, device=device, dtype=dtype, allow_nonfinite=allow_nonfinite)

        module = kind(config, device="meta", dtype=dtype)  # placeholders; the loader brings the weights
        module._pending_load = loader
        if not lazy:
            module._ensure_loaded()
        return module.truncated(matryoshka_groups) if matryoshka_groups is not None else module

    def truncated(self, n_groups: int) -> Dictionary:
        """A Matryoshka dictionary cut to its first ``n_groups`` nested latent groups."""
        groups = self.config.matryoshka_groups
        if not groups:
            raise ConfigError("this dictionary has no matryoshka_groups in its config; it cannot be truncated")
        if not 1 <= n_groups <= len(groups):
            raise ConfigError(f"matryoshka_groups={n_groups} is out of range: this dictionary has {len(groups)} groups")
        keep = sum(groups[:n_groups])
        config = self.config.model_copy(update={"d_sae": keep, "matryoshka_groups": groups[:n_groups]})
        self._ensure_loaded()
        cut = type(self)(config, device="meta")
        cut._pending_load = None
        for spec in self.tensor_specs(self.config):
            tensor = self.get_parameter(spec.attr).detach()
            if spec.latent_axis is not None:
                tensor = tensor.narrow(spec.latent_axis, 0, keep).clone()
            cut._set_param(spec.attr, nn.Parameter(tensor, requires_grad=False))
        return cut

    def extra_repr(self) -> str:
        c = self.config
        where = f", site={c.site}, layer={c.layer if c.layers is None else c.layers}" if c.site else ""
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, d_out={c.d_out}{where}"

    def config_json(self) -> str:
        """The config as it would be written to config.json."""
        return json.dumps(self.config.model_dump(mode="json"), indent=2, sort_keys=True)
