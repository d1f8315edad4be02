"""How one attached dictionary reads and rewrites a model's activations during a forward.

An :class:`Attachment` turns the ScopedModel's current mode (observe, splice,
feature edits) into a list of ``(hookpoint, fn)`` pairs, ``fn`` mapping the
activation at that hookpoint to its replacement. Every intervention is written
as an edit of feature activations, so one code path serves them all:

* steer ``alpha``  -> ``f[feature] += alpha``  (adds ``alpha`` x the decoder direction)
* clamp ``value``  -> ``f[feature] = value``
* ablate           -> ``f[feature] = 0``

Without splicing, the site keeps its exact activation plus ``decode(f_edited) -
decode(f)`` (the error term is preserved); with splicing, it becomes the
reconstruction of the edited features (plus the exact error when
``error_term=True``, detached so gradients flow through the features).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from scope_hub.dictionaries import Crosscoder, CrossLayerTranscoder, Dictionary, SkipTranscoder, SparseFeatures
from scope_hub.dictionaries.sae import decode_linear
from scope_hub.errors import (
    ArgumentError,
    ConfigError,
    ScopeHubError,
    ShapeMismatchError,
    UnsupportedOperationError,
)
from scope_hub.hookpoints import Hookpoint, linear_width

HookFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureEdit:
    """One change to a feature's activation: ``op`` is ``add`` (steer) or ``set`` (clamp/ablate)."""

    features: tuple[int, ...]
    """Latent indices (for CLTs: indices within ``layer``)."""
    op: str
    """``add`` or ``set``."""
    value: float
    """Amount added, or value set."""
    layer: int | None = None
    """CLT source layer the features belong to (position in ``config.layers``)."""
    positions: slice | tuple[int, ...] | None = None
    """Sequence positions to edit (None: all). Ints >= 0 and slices with non-negative bounds are
    absolute positions in the sequence (with a KV cache, a decode step's token is at the cache
    length); negative ints and slices with a negative bound count from the end of each forward call."""


@dataclass
class PositionClock:
    """Absolute position of the first token of the forward call in flight (the KV cache's length)."""

    offset: int = 0


@dataclass
class Mode:
    """The combined intervention state of a ScopedModel while contexts are active."""

    splice: frozenset[str] = frozenset()
    """Names of dictionaries whose site is replaced by their output."""
    error_term: frozenset[str] = frozenset()
    """Spliced dictionaries that add back their exact error (outputs equal the bare model's)."""
    edits: dict[str, tuple[FeatureEdit, ...]] = field(default_factory=dict)
    """Feature edits per dictionary name."""
    captures: dict[str, tuple[tuple[dict[str, Any], bool], ...]] = field(default_factory=dict)
    """Dictionary name -> ``(target, live)`` pairs: on each forward its features are written to every
    target under the name. Live records (``ScopedModel.capture``) are the tensor the forward decodes,
    never masked or sparsified, and a grad-requiring leaf when model and dictionary are frozen."""
    attention_mask: torch.Tensor | None = None
    """Padding mask of the current ``run_with_cache`` call; padded positions are zeroed in its records."""
    sparse: bool = False
    """``run_with_cache`` records SparseFeatures instead of dense tensors."""
    clock: PositionClock = field(default_factory=PositionClock)
    """Shared by every mode of one ScopedModel; set before each forward while positional edits are active."""

    def has_positional_edits(self) -> bool:
        return any(e.positions is not None for edits in self.edits.values() for e in edits)


def apply_edits(
    features: torch.Tensor, edits: tuple[FeatureEdit, ...], layer: int | None = None, offset: int = 0
) -> torch.Tensor:
    """A copy of ``features`` ``[..., seq, d_sae]`` with every edit (for ``layer``, in CLTs) applied in order;
    ``offset`` is the absolute position of the first of the ``seq`` tokens."""
    edited = features.clone()
    for edit in edits:
        if edit.layer != layer:
            continue
        index = list(edit.features)
        if edit.positions is None:
            if edit.op == "add":
                edited[..., index] += edit.value
            else:
                edited[..., index] = edit.value
            continue
        where = position_mask(edit.positions, edited.shape[-2], offset, edited.device).unsqueeze(-1)
        if edit.op == "add":
            edited[..., index] += edit.value * where.to(edited.dtype)
        else:
            edited[..., index] = edited[..., index].masked_fill(where, edit.value)
    return edited


def steering_delta(
    dictionary: Dictionary, edits: tuple[FeatureEdit, ...], act: torch.Tensor, offset: int
) -> torch.Tensor:
    """What adding ``value`` to features adds at the output site: value x their decoder rows (masked to positions)."""
    total = torch.zeros((), dtype=dictionary.w_dec.dtype, device=dictionary.w_dec.device)
    for edit in edits:
        direction = edit.value * dictionary.w_dec[list(edit.features)].sum(0)
        if edit.positions is not None:
            mask = position_mask(edit.positions, act.shape[-2], offset, act.device)
            direction = mask.unsqueeze(-1).to(direction.dtype) * direction
        total = total + direction
    return (total / _scale_out(dictionary)).to(act.dtype)


def position_mask(positions: slice | tuple[int, ...], length: int, offset: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[length]`` mask over a forward call whose first token sits at absolute position ``offset``.

    Example:
        >>> position_mask((0, 2, -1), 4, 0, "cpu").tolist()      # absolute 0 and 2, and this call's last
        [True, False, True, True]
        >>> position_mask((0, 2, -1), 1, 5, "cpu").tolist()      # a decode step at position 5: only -1
        [True]
        >>> position_mask(slice(3, None), 2, 2, "cpu").tolist()  # from absolute position 3 on
        [False, True]
    """
    mask = torch.zeros(length, dtype=torch.bool)
    if isinstance(positions, slice):
        bounds = (positions.start, positions.stop)
        if any(b is not None and b < 0 for b in bounds):
            mask[positions] = True  # relative to this call
        else:
            absolute = torch.arange(offset, offset + length)
            start, step = positions.start or 0, positions.step or 1
            mask = (absolute >= start) & ((absolute - start) % step == 0)
            if positions.stop is not None:
                mask &= absolute < positions.stop
    else:
        local = [p - offset if p >= 0 else length + p for p in positions]
        mask[[i for i in local if 0 <= i < length]] = True
    return mask.to(device)


def normalize_positions(positions: Any) -> slice | tuple[int, ...] | None:
    """Normalise ``positions=`` (a slice, an int-like, or int-likes) for a FeatureEdit."""
    if positions is None:
        return None
    if isinstance(positions, slice):
        if positions.step is not None and positions.step <= 0:
            raise ArgumentError(
                f"positions={positions}: the step must be positive", argument="positions", value=positions
            )
        return positions
    try:
        return (operator.index(positions),)
    except TypeError:
        pass
    try:
        return tuple(operator.index(p) for p in positions)
    except TypeError:
        raise ArgumentError(
            f"positions={positions!r}: give an int, ints, or a slice", argument="positions", value=positions
        ) from None


def cache_length(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Tokens already in the KV cache of a forward call (0 without one): the call's first absolute position.

    The cache is found by what it is (``get_seq_length``), whether passed by keyword or by position.
    """
    for value in (kwargs.get("cache"), kwargs.get("past_key_values"), *args):
        if value is not None and hasattr(value, "get_seq_length"):
            return int(value.get_seq_length())
    cache_position = kwargs.get("cache_position")
    return int(cache_position.reshape(-1)[0]) if cache_position is not None and cache_position.numel() else 0


class Attachment:
    """One dictionary attached at resolved hookpoints (strings like ``model.layers.6.output``)."""

    def __init__(self, name: str, dictionary: Dictionary, hook_in: list[str], hook_out: list[str]) -> None:
        self.name = name
        self.dictionary = dictionary
        self.hook_in = hook_in
        self.hook_out = hook_out

    def hooks(self, mode: Mode) -> list[tuple[str, HookFn]]:
        """(hookpoint, fn) pairs implementing ``mode`` for this dictionary; empty when nothing to do."""
        spliced = self.name in mode.splice
        edits = mode.edits.get(self.name, ())
        capturing = self.name in mode.captures
        if not (spliced or edits or capturing):
            return []
        return self._hooks(mode, spliced, edits, capturing)

    def _hooks(self, mode: Mode, spliced: bool, edits: tuple, capturing: bool) -> list[tuple[str, HookFn]]:
        raise NotImplementedError

    def _record(self, mode: Mode, features: torch.Tensor) -> None:
        observed: torch.Tensor | SparseFeatures | None = None
        for target, live in mode.captures[self.name]:
            if live:
                target[self.name] = features
                continue
            if observed is None:
                observed = features
                mask = mode.attention_mask
                if mask is not None and mask.shape == features.shape[:2]:
                    shape = mask.shape + (1,) * (features.dim() - 2)
                    observed = features * mask.reshape(shape).to(features.dtype)
                observed = SparseFeatures.from_dense(observed) if mode.sparse else observed
            target[self.name] = observed


class SingleSiteAttachment(Attachment):
    """SAEs, transcoders and skip transcoders: read one hookpoint, write one (maybe the same)."""

    def _hooks(self, mode: Mode, spliced: bool, edits: tuple, capturing: bool) -> list[tuple[str, HookFn]]:
        d = self.dictionary
        same_site = self.hook_in == self.hook_out
        stash: dict[str, torch.Tensor] = {}
        only_steering = not spliced and not capturing and all(e.op == "add" for e in edits)

        def write(act: torch.Tensor) -> torch.Tensor:
            x = act if same_site else stash.pop("x")
            if only_steering:  # no need to encode: adding alpha to f adds alpha x decoder row
                return act + steering_delta(d, edits, act, mode.clock.offset)
            features = d.encode(x)
            live = capturing and any(is_live for _, is_live in mode.captures[self.name])
            if live and torch.is_grad_enabled() and not features.requires_grad:
                features = features.detach().requires_grad_()  # frozen model and dictionary: a leaf to differentiate
            if capturing:
                self._record(mode, features)
            if not (spliced or edits):
                return act
            edited = apply_edits(features, edits, offset=mode.clock.offset) if edits else features
            if not spliced:
                return act + (decode_linear(edited - features, d.w_dec) / _scale_out(d)).to(act.dtype)
            out = d.decode(edited)
            if isinstance(d, SkipTranscoder):
                out = out + d.skip(x)
            if self.name in mode.error_term:
                reference = d.decode(features) + (d.skip(x) if isinstance(d, SkipTranscoder) else 0)
                out = out + (act - reference.to(act.dtype)).detach()
            return out.to(act.dtype)

        hooks: list[tuple[str, HookFn]] = []
        if not same_site and not only_steering:

            def keep_input(act: torch.Tensor) -> torch.Tensor:
                stash["x"] = act
                return act

            hooks.append((self.hook_in[0], keep_input))
        hooks.append((self.hook_out[0], write))
        return hooks


class CLTAttachment(Attachment):
    """Cross-layer transcoders: encode at every layer's input, write every layer's output."""

    def _hooks(self, mode: Mode, spliced: bool, edits: tuple, capturing: bool) -> list[tuple[str, HookFn]]:
        clt = cast(CrossLayerTranscoder, self.dictionary)
        n = clt.n_layers
        feats: list[torch.Tensor] = []
        edited: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []

        def read(i: int) -> HookFn:
            def fn(act: torch.Tensor) -> torch.Tensor:
                if i == 0:
                    feats.clear()
                    edited.clear()
                    inputs.clear()
                f = clt.encode_layer(i, act)
                feats.append(f)
                edited.append(apply_edits(f, edits, layer=i, offset=mode.clock.offset) if edits else f)
                inputs.append(act)
                if capturing and i == n - 1:
                    self._record(mode, torch.stack(feats, dim=-2))
                return act

            return fn

        def write(j: int) -> HookFn:
            def fn(act: torch.Tensor) -> torch.Tensor:
                if not (spliced or edits):
                    return act
                pred = clt.decode_layer(j, edited) + clt.skip_layer(j, inputs[j])
                if not spliced:
                    return act + (pred - clt.decode_layer(j, feats) - clt.skip_layer(j, inputs[j])).to(act.dtype)
                if self.name in mode.error_term:
                    reference = clt.decode_layer(j, feats) + clt.skip_layer(j, inputs[j])
                    pred = pred + (act - reference.to(act.dtype)).detach()
                return pred.to(act.dtype)

            return fn

        hooks: list[tuple[str, HookFn]] = []
        for i in range(n):
            hooks.append((self.hook_in[i], read(i)))
            hooks.append((self.hook_out[i], write(i)))
        return hooks


class CrosscoderAttachment(Attachment):
    """Crosscoders read several layers at once, so they can be observed but not spliced causally."""

    def _hooks(self, mode: Mode, spliced: bool, edits: tuple, capturing: bool) -> list[tuple[str, HookFn]]:
        if spliced or edits:
            raise UnsupportedOperationError(
                f"{self.name}: a crosscoder's features depend on later layers, so it cannot be spliced or "
                "edited during a forward; use run_with_cache to read its features"
            )
        crosscoder = cast(Crosscoder, self.dictionary)
        seen: list[torch.Tensor] = []

        def read(i: int) -> HookFn:
            def fn(act: torch.Tensor) -> torch.Tensor:
                if i == 0:
                    seen.clear()
                seen.append(act)
                if i == len(self.hook_in) - 1:
                    self._record(mode, crosscoder.encode(torch.stack(seen, dim=-2)))
                return act

            return fn

        return [(hp, read(i)) for i, hp in enumerate(self.hook_in)]


def _scale_out(d: Dictionary) -> float:
    norm = d.config.normalization
    return norm.scale_out if norm.kind == "constant_scale" else 1.0


def attachment_for(name: str, dictionary: Dictionary, hook_in: list[str], hook_out: list[str]) -> Attachment:
    """The attachment class that fits the dictionary's kind."""
    if isinstance(dictionary, CrossLayerTranscoder):
        return CLTAttachment(name, dictionary, hook_in, hook_out)
    if isinstance(dictionary, Crosscoder):
        return CrosscoderAttachment(name, dictionary, hook_in, hook_out)
    return SingleSiteAttachment(name, dictionary, hook_in, hook_out)


def resolve_hookpoints(model: Any, config: Any, adapter: Callable[[], Any]) -> tuple[list[str], list[str]]:
    """(read, write) hookpoints of a dictionary on ``model``, one per layer, checked before any forward.

    Explicit ``hook_point_in/out`` win over site + layer; ``adapter()`` gives the model family's
    adapter (called only when needed, so explicit hookpoints work on families without one). The
    modules must exist and ``d_in``/``d_out`` must equal the width there where it is known.
    """
    layers = config.layers if config.layers is not None else [config.layer]
    explicit_in, explicit_out = config.hook_points()
    site_in, site_out = config.site, config.site_out or config.site
    if explicit_in is None and (site_in is None or None in layers):
        raise ConfigError(
            "the dictionary's config names neither hook_point_in nor site + layer(s); set them "
            "(e.g. site='resid_post', layer=6) before attaching"
        )

    def resolve(explicit: str | None, site: str | None, layer: int) -> str:
        if explicit is not None:
            return str(Hookpoint.parse(explicit.replace("{layer}", str(layer))))
        return str(adapter().hookpoint(site, layer))

    hook_in = [resolve(explicit_in, site_in, layer) for layer in layers]
    hook_out = [resolve(explicit_out, site_out, layer) for layer in layers]
    for hp in hook_in + hook_out:
        Hookpoint.parse(hp).resolve(model)  # fail now, not mid-forward
    # Widths too: a mismatch would otherwise surface as a bare matmul error on the first forward.
    for field_name, width, hookpoint in (("d_in", config.d_in, hook_in[0]), ("d_out", config.d_out, hook_out[0])):
        expected = _width_at(model, Hookpoint.parse(hookpoint), layers[0], adapter)
        if expected is not None and expected != width:
            where = (
                f"{config.site or 'explicit hookpoint'}, layer {config.layer if config.layer is not None else layers}"
            )
            raise ShapeMismatchError(
                f"the dictionary's {field_name}={width} does not fit {hookpoint} of this {type(model).__name__}, "
                f"which is {expected} wide; it was made for {config.model or 'another model'} ({where}): attach "
                "it to that model, or pick a dictionary of this one",
                field=field_name,
                hookpoint=hookpoint,
                expected=expected,
                actual=width,
            )
    return hook_in, hook_out


def _width_at(model: Any, hookpoint: Hookpoint, layer: int | None, adapter: Callable[[], Any]) -> int | None:
    try:
        width = adapter().width_at(hookpoint, layer)
    except ScopeHubError:  # no adapter for this family: explicit hookpoints still work, unchecked
        width = None
    return width or linear_width(model, hookpoint)
