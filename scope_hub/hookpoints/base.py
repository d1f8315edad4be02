"""Hookpoints and the adapter base class every model family subclasses.

A **hookpoint** is a transformers module path plus ``input`` or ``output``,
written ``model.layers.12.output`` or ``model.layers.12.self_attn.o_proj.input``
(the Gemma Scope 2 convention). A **site** (``resid_pre``, ``resid_post``,
``attn_out``, ``mlp_in``, ``mlp_out``) at a layer resolves to one hookpoint per
family; a :class:`HookpointAdapter` subclass holds that mapping as templates
relative to the decoder layer module, so a new family is a dozen declarative lines.

Everything here works from a config alone (no weights needed); passing a model
additionally checks that the module paths exist.

Example:
    >>> hp = Hookpoint.parse("model.layers.12.self_attn.o_proj.input")
    >>> hp.module, hp.io, str(hp)
    ('model.layers.12.self_attn.o_proj', 'input', 'model.layers.12.self_attn.o_proj.input')
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from scope_hub import kinds
from scope_hub.errors import HookpointError, UnsupportedModelError

SITES: tuple[str, ...] = kinds.SITES
"""Sites every adapter resolves, in forward order within a layer (the table of kinds lists them)."""

IO = Literal["input", "output"]
_MODULE_RE = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")


@dataclass(frozen=True)
class Hookpoint:
    """A module path plus which side of it to read or write (``input`` or ``output``).

    ``input`` means the first positional argument (or the ``hidden_states``
    keyword) of the module's forward; ``output`` means its return value (the
    first element when it returns a tuple).

    Example:
        >>> Hookpoint("model.layers.3", "output")
        Hookpoint('model.layers.3.output')
        >>> Hookpoint.parse("transformer.h.0.mlp.output").module
        'transformer.h.0.mlp'
    """

    module: str
    io: IO

    def __post_init__(self) -> None:
        if self.io not in ("input", "output"):
            raise HookpointError(f"hookpoint io must be 'input' or 'output', got {self.io!r}")
        if not _MODULE_RE.match(self.module):
            raise HookpointError(f"bad hookpoint module path {self.module!r}; expected e.g. 'model.layers.12'")

    @classmethod
    def parse(cls, text: str | Hookpoint) -> Hookpoint:
        """Parse ``"<module path>.input"`` / ``"<module path>.output"`` (a Hookpoint passes through).

        Example:
            >>> Hookpoint.parse("model.layers.0.input").io
            'input'
        """
        if isinstance(text, Hookpoint):
            return text
        if not isinstance(text, str) or "." not in text:
            raise HookpointError(f"bad hookpoint {text!r}: write '<module path>.input' or '<module path>.output'")
        module, io = text.rsplit(".", 1)
        if io not in ("input", "output"):
            raise HookpointError(f"bad hookpoint {text!r}: it must end in '.input' or '.output'")
        return cls(module, io)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.module}.{self.io}"

    def __repr__(self) -> str:
        return f"Hookpoint({str(self)!r})"

    def resolve(self, model: Any) -> Any:
        """The ``torch.nn.Module`` this hookpoint names inside ``model``.

        Example:
            >>> import torch
            >>> Hookpoint("0", "output").resolve(torch.nn.Sequential(torch.nn.ReLU()))
            ReLU()
        """
        try:
            return model.get_submodule(self.module)
        except AttributeError:
            raise HookpointError(
                f"hookpoint {self} names no module of {type(model).__name__}; "
                f"check the path against model.named_modules()"
            ) from None


@dataclass(frozen=True)
class MLPBlock:
    """What a transcoder replaces: ``output = modules[-1](...modules[0](input))``.

    ``modules`` are full module paths applied in order to the tensor read at
    ``input`` (site ``mlp_in``) to give the tensor at ``output`` (site
    ``mlp_out``). Replacing ``output`` with a transcoder's prediction splices it
    in; ``modules[0]`` is the expensive MLP itself, which a splice may skip.
    """

    input: Hookpoint
    output: Hookpoint
    modules: tuple[str, ...]


class HookpointAdapter:
    """Maps sites to hookpoints for one model family; subclasses only declare templates.

    Templates are relative to the decoder layer module (``{layers_path}.{L}``):
    ``""`` is the layer itself, ``"self_attn.o_proj"`` a submodule. Class
    attributes to set in a subclass:

    * ``family``, ``model_types``: a name and the ``config.model_type`` values served;
    * ``layers_path``: the ModuleList of decoder layers (``model.layers``);
    * ``final_norm_path``: the norm applied after the last layer;
    * ``site_templates``: site -> ``(submodule, io)``;
    * ``mlp_modules``: submodules that map mlp_in to mlp_out, in order;
    * ``attn_residual_template``: the attention block's additive contribution to
      the residual stream (after o_proj, and after the post-attention norm in
      Gemma); not a site, but what tests and decompositions need.

    Example:
        >>> from transformers import LlamaConfig
        >>> from scope_hub.hookpoints import adapter_for
        >>> ad = adapter_for(LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2))
        >>> str(ad.hookpoint("mlp_in", 1)), ad.site_width("attn_out")
        ('model.layers.1.post_attention_layernorm.output', 64)
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    layers_path: ClassVar[str] = "model.layers"
    final_norm_path: ClassVar[str] = "model.norm"
    site_templates: ClassVar[dict[str, tuple[str, IO]]] = {}
    mlp_modules: ClassVar[tuple[str, ...]] = ("mlp",)
    attn_residual_template: ClassVar[tuple[str, IO]] = ("self_attn", "output")
    parallel_residual: bool = False
    """True when attention and MLP both read the layer input (GPT-NeoX); informational."""

    def __init__(self, config: Any) -> None:
        self.config = self.text_config(config)

    # -- config facts ---------------------------------------------------------------------------
    @classmethod
    def text_config(cls, config: Any) -> Any:
        """The config holding the decoder's sizes (multimodal families override)."""
        return config

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)

    @property
    def n_layers(self) -> int:
        """Number of decoder layers."""
        return int(self.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        """Residual stream width."""
        return int(self.config.hidden_size)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        # Gemma, Qwen 3 and recent Llamas decouple head_dim from hidden_size / heads.
        head_dim = getattr(self.config, "head_dim", None)
        return int(head_dim) if head_dim else self.d_model // self.n_heads

    @property
    def d_mlp(self) -> int:
        """Hidden width inside the MLP (not a site; for reference)."""
        return int(self.config.intermediate_size)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(s for s in SITES if s in self.site_templates)

    def site_width(self, site: str) -> int:
        """Last-dimension width of the tensor at ``site`` (attn_out is heads x head_dim).

        Example:
            >>> from transformers import Gemma3TextConfig
            >>> from scope_hub.hookpoints import adapter_for
            >>> adapter_for(Gemma3TextConfig(hidden_size=640, num_attention_heads=4, head_dim=256)).site_width("attn_out")
            1024
        """
        self._check_site(site)
        return self.n_heads * self.head_dim if site == "attn_out" else self.d_model

    def width_at(self, hookpoint: Hookpoint | str, layer: int | None) -> int | None:
        """Width at ``hookpoint`` when it is one of this family's sites at ``layer``, else None.

        Example:
            >>> from transformers import LlamaConfig
            >>> from scope_hub.hookpoints import adapter_for
            >>> ad = adapter_for(LlamaConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2))
            >>> ad.width_at("model.layers.1.output", 1), ad.width_at("model.layers.1.mlp.act_fn.output", 1)
            (64, None)
        """
        if layer is None or not 0 <= layer < self.n_layers:
            return None
        hp = Hookpoint.parse(hookpoint)
        return next((self.site_width(s) for s in self.sites if self.hookpoint(s, layer) == hp), None)

    # -- resolution -----------------------------------------------------------------------------
    def layer_module(self, layer: int) -> str:
        """Module path of decoder layer ``layer`` (what a forward can stop after)."""
        self._check_layer(layer)
        return f"{self.layers_path}.{layer}"

    def _at(self, layer: int, template: tuple[str, IO]) -> Hookpoint:
        sub, io = template
        base = self.layer_module(layer)
        return Hookpoint(f"{base}.{sub}" if sub else base, io)

    def hookpoint(self, site: str, layer: int) -> Hookpoint:
        """The hookpoint of ``site`` at ``layer``.

        Example:
            >>> from transformers import GPT2Config
            >>> from scope_hub.hookpoints import adapter_for
            >>> str(adapter_for(GPT2Config(n_layer=2)).hookpoint("attn_out", 1))
            'transformer.h.1.attn.c_proj.input'
        """
        self._check_site(site)
        return self._at(layer, self.site_templates[site])

    def attn_residual(self, layer: int) -> Hookpoint:
        """The attention block's additive contribution to the residual stream at ``layer``."""
        return self._at(layer, self.attn_residual_template)

    def mlp_block(self, layer: int) -> MLPBlock:
        """The mlp_in -> mlp_out pair at ``layer`` and the modules computing it (for transcoders)."""
        base = self.layer_module(layer)
        return MLPBlock(
            input=self.hookpoint("mlp_in", layer),
            output=self.hookpoint("mlp_out", layer),
            modules=tuple(f"{base}.{m}" for m in self.mlp_modules),
        )

    def layer_of(self, hookpoint: Hookpoint | str) -> int | None:
        """Decoder layer index a hookpoint lives in, or None (embeddings, final norm, lm_head)."""
        hp = Hookpoint.parse(hookpoint)
        prefix = self.layers_path + "."
        if not hp.module.startswith(prefix):
            return None
        head = hp.module[len(prefix) :].split(".", 1)[0]
        return int(head) if head.isdigit() else None

    def stop_hookpoint(self, hookpoints: Iterable[Hookpoint | str]) -> Hookpoint | None:
        """Where a forward may stop once every hookpoint in ``hookpoints`` has fired.

        That is the output of the deepest decoder layer involved, or its input when
        only that layer's input is needed; None when a hookpoint lies outside the
        layer stack (then run the full forward).

        Example:
            >>> from transformers import LlamaConfig
            >>> from scope_hub.hookpoints import adapter_for
            >>> ad = adapter_for(LlamaConfig(num_hidden_layers=4))
            >>> ad.stop_hookpoint(["model.layers.1.mlp.output", "model.layers.2.input"])
            Hookpoint('model.layers.2.input')
        """
        hps = [Hookpoint.parse(h) for h in hookpoints]
        if not hps:
            raise HookpointError("stop_hookpoint needs at least one hookpoint")
        found = [self.layer_of(h) for h in hps]
        layers = [layer for layer in found if layer is not None]
        if len(layers) != len(found):
            return None
        last = max(layers)
        layer_in = Hookpoint(self.layer_module(last), "input")
        deepest = {h for h, layer in zip(hps, layers) if layer == last}
        return layer_in if deepest == {layer_in} else Hookpoint(self.layer_module(last), "output")

    def validate(self, model: Any) -> None:
        """Check that every site, the MLP modules and the final norm exist in ``model``."""
        paths = [self.hookpoint(site, 0).module for site in self.sites]
        paths += [*list(self.mlp_block(0).modules), self.attn_residual(0).module, self.final_norm_path]
        missing = [p for p in paths if not _has_submodule(model, p)]
        if missing:
            raise UnsupportedModelError(
                f"{type(model).__name__} (model_type {self.model_type!r}) lacks modules {missing} that the "
                f"{self.family} adapter expects; pass the *ForCausalLM model, or fix scope_hub/hookpoints/"
            )

    # -- checks ---------------------------------------------------------------------------------
    def _check_site(self, site: str) -> None:
        if site not in self.site_templates:
            hint = " ('mlp' is the transcoder pair: use mlp_in and mlp_out, see mlp_block())" if site == "mlp" else ""
            raise UnsupportedModelError(
                f"site {site!r} is not supported for {self.family} models{hint}; supported sites: {', '.join(self.sites)}"
            )

    def _check_layer(self, layer: int) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise HookpointError(
                f"layer {layer!r} is out of range for this {self.family} model: it has {self.n_layers} layers (0..{self.n_layers - 1})"
            )


def _has_submodule(model: Any, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def linear_width(model: Any, hookpoint: Hookpoint | str) -> int | None:
    """Width at a hookpoint on a linear layer (``in_features``/``out_features``), else None.

    Example:
        >>> import torch
        >>> linear_width(torch.nn.Sequential(torch.nn.Linear(3, 5)), "0.output")
        5
    """
    hp = Hookpoint.parse(hookpoint)
    width = getattr(hp.resolve(model), "in_features" if hp.io == "input" else "out_features", None)
    return width if isinstance(width, int) else None
