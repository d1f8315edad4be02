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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from scope_hub.dictionaries import CrossLayerTranscoder, Crosscoder, Dictionary, SkipTranscoder, SparseFeatures
from scope_hub.dictionaries.sae import decode_linear

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
    """Sequence positions of each forward call to edit (None: all). Indices past a call's length
    are skipped, so prompt positions are left alone in ``generate``'s one-token decode steps."""


@dataclass
class Mode:
    """The combined intervention state of a ScopedModel while contexts are active."""

    splice: frozenset[str] = frozenset()
    """Names of dictionaries whose site is replaced by their output."""
    error_term: bool = False
    """Whether spliced sites add back the exact error."""
    edits: dict[str, tuple[FeatureEdit, ...]] = field(default_factory=dict)
    """Feature edits per dictionary name."""
    capture: dict[str, Any] | None = None
    """When set, features of every hooked dictionary are written here by name."""
    capture_names: frozenset[str] | None = None
    """Dictionaries to capture (None: all)."""
    attention_mask: torch.Tensor | None = None
    """Padding mask of the current call; padded positions are zeroed in captured features."""
    sparse: bool = False
    """Capture features as SparseFeatures instead of dense tensors."""


def apply_edits(features: torch.Tensor, edits: tuple[FeatureEdit, ...], layer: int | None = None) -> torch.Tensor:
    """A copy of ``features`` with every edit (for ``layer``, in CLTs) applied in order."""
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
        where = position_mask(edit.positions, edited.shape[-2], edited.device).unsqueeze(-1)
        if edit.op == "add":
            edited[..., index] += edit.value * where.to(edited.dtype)
        else:
            edited[..., index] = torch.where(where, torch.tensor(edit.value, dtype=edited.dtype), edited[..., index])
    return edited


def position_mask(positions: slice | tuple[int, ...], length: int, device: torch.device) -> torch.Tensor:
    """Boolean ``[length]`` mask of the positions (Python indexing; out-of-range ints skipped)."""
    mask = torch.zeros(length, dtype=torch.bool)
    if isinstance(positions, slice):
        mask[positions] = True
    else:
        mask[[p for p in positions if -length <= p < length]] = True
    return mask.to(device)


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
        capturing = mode.capture is not None and (mode.capture_names is None or self.name in mode.capture_names)
        if not (spliced or edits or capturing):
            return []
        return self._hooks(mode, spliced, edits, capturing)

    def _hooks(self, mode: Mode, spliced: bool, edits: tuple, capturing: bool) -> list[tuple[str, HookFn]]:
        raise NotImplementedError

    def _record(self, mode: Mode, features: torch.Tensor) -> None:
        mask = mode.attention_mask
        if mask is not None and mask.shape == features.shape[:2]:
            shape = mask.shape + (1,) * (features.dim() - 2)
            features = features * mask.reshape(shape).to(features.dtype)
        mode.capture[self.name] = SparseFeatures.from_dense(features) if mode.sparse else features


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
                positional = any(e.positions is not None for e in edits)
                delta = torch.zeros(*act.shape[-2:-1] if positional else (), d.d_sae, dtype=act.dtype, device=act.device)
                return act + decode_linear(apply_edits(delta, edits), d.w_dec).to(act.dtype) / _scale_out(d)
            features = d.encode(x)
            if capturing:
                self._record(mode, features)
            if not (spliced or edits):
                return act
            edited = apply_edits(features, edits) if edits else features
            if not spliced:
                return act + (decode_linear(edited - features, d.w_dec) / _scale_out(d)).to(act.dtype)
            out = d.decode(edited)
            if isinstance(d, SkipTranscoder):
                out = out + d.skip(x)
            if mode.error_term:
                reference = d.decode(features) + (d.skip(x) if isinstance(d, SkipTranscoder) else 0)
                out = out + (act - reference.to(act.dtype)).detach()
            return out.to(act.dtype)

        hooks: list[tuple[str, HookFn]] = []
        if not same_site and not only_steering:
            hooks.append((self.hook_in[0], lambda act: stash.__setitem__("x", act) or act))
        hooks.append((self.hook_out[0], write))
        return hooks


class CLTAttachment(Attachment):
    """Cross-layer transcoders: encode at every layer's input, write every layer's output."""

    def _hooks(self, mode: Mode, spliced: bool, edits: tuple, capturing: bool) -> list[tuple[str, HookFn]]:
        clt: CrossLayerTranscoder = self.dictionary
        n = clt.n_layers
        feats: list[torch.Tensor] = []
        edited: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []

        def read(i: int) -> HookFn:
            def fn(act: torch.Tensor) -> torch.Tensor:
                if i == 0:
                    feats.clear(), edited.clear(), inputs.clear()
                f = clt.encode_layer(i, act)
                feats.append(f)
                edited.append(apply_edits(f, edits, layer=i) if edits else f)
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
                if mode.error_term:
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
            raise NotImplementedError(
                f"{self.name}: a crosscoder's features depend on later layers, so it cannot be spliced or "
                "edited during a forward; use run_with_cache to read its features"
            )
        crosscoder: Crosscoder = self.dictionary
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
