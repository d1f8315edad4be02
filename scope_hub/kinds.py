"""The table of kinds: what every dictionary type and activation function is, in one place (torch-free).

Encoders, converters, cards, the registry's key check, trainers and analysis ask this table
(``kind(config.type).multi_layer``, ``architecture(name).stores_threshold``) instead of
comparing names; a test fails on a kind or architecture name compared as a string literal
anywhere else. Like fsspec's ``known_implementations``, an entry names its implementation
as ``"module:Class"``, imported only when a dictionary is built, so the table itself (and
the registry, cards and CLI that read it) never imports torch.

Adding a kind is one file (the :class:`~scope_hub.dictionaries.Dictionary` subclass) plus
one :func:`register_kind` call; ``docs/architecture.md`` has the recipe and
``scope_hub.testing.check_dictionary_kind`` the suite it must pass.

Example:
    >>> kind("clt").multi_layer, kind("transcoder").reconstructs_input
    (True, False)
    >>> [name for name, info in ARCHITECTURES.items() if info.stores_threshold]
    ['jumprelu', 'batchtopk']
    >>> kind("sparse_thing")
    Traceback (most recent call last):
    ...
    scope_hub.errors.ConfigError: unknown dictionary type 'sparse_thing'; use one of: sae, transcoder, skip_transcoder, clt, crosscoder
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from scope_hub.errors import ConfigError

# Names as constants, for code that *produces* a kind (a converter choosing what it read).
SAE = "sae"
TRANSCODER = "transcoder"
SKIP_TRANSCODER = "skip_transcoder"
CLT = "clt"
CROSSCODER = "crosscoder"
JUMPRELU = "jumprelu"
TOPK = "topk"
BATCHTOPK = "batchtopk"
RELU = "relu"

Site = Literal["resid_pre", "resid_post", "attn_out", "mlp_in", "mlp_out"]
"""A place in the model a dictionary reads or writes; each hookpoint adapter resolves it per model family."""
SITES: tuple[str, ...] = get_args(Site)
"""Every :data:`Site`, in model order."""

GEMMA_SCOPE_2 = "gemma_scope_2"
"""Key of Gemma Scope 2's names in ``peer_names``."""
SAELENS = "saelens"
"""Key of SAELens's names in ``peer_names``."""

Layout = Literal["single", "cross_layer", "stacked"]


@dataclass(frozen=True)
class KindInfo:
    """One dictionary type: its math, tensors, sites and names in peer formats."""

    name: str
    """The ``config.type`` and key type (``sae``)."""
    implementation: str
    """``"module:Class"`` of the :class:`~scope_hub.dictionaries.Dictionary` subclass (imported lazily)."""
    summary: str
    """One line for docs and error messages."""
    layout: Layout = "single"
    """Tensor layout (:mod:`scope_hub.tensor_layout`): ``single`` (one params.safetensors),
    ``cross_layer`` (one file per source layer, decoders to every later layer), ``stacked``
    (one encoder and decoder over several stacked sites)."""
    tensors: tuple[str, ...] = ("w_enc [d_in, d_sae]", "b_enc [d_sae]", "w_dec [d_sae, d_out]", "b_dec [d_out]")
    """Tensors and shapes for the docs (``threshold [d_sae]`` joins them for threshold architectures)."""
    reconstructs_input: bool = False
    """True when the output target is the input site itself (d_out = d_in, no ``site_out``)."""
    multi_layer: bool = False
    """True when the config lists ``layers`` instead of one ``layer``."""
    affine_skip: Literal["never", "optional", "always"] = "never"
    """Whether the kind has an ``affine_skip_connection`` path."""
    default_sites: tuple[str, str | None] = ("resid_post", None)
    """(site read, site written) a trainer or importer assumes when none is given."""
    config_fields: tuple[str, ...] = ("layer",)
    """Config fields the kind needs beyond d_in/d_sae/architecture."""
    peer_names: Mapping[str, str] = field(default_factory=dict)
    """The kind's name in each peer format that spells it differently (format name -> name)."""

    @property
    def spliced(self) -> bool:
        """True when attaching the dictionary replaces a model activation (crosscoders only read)."""
        return self.layout != "stacked"

    @property
    def stacked(self) -> bool:
        """True when one encoder reads several stacked sites at once (a crosscoder)."""
        return self.layout == "stacked"

    @property
    def per_layer_decoders(self) -> bool:
        """True when each source layer decodes into every later layer (a CLT)."""
        return self.layout == "cross_layer"


@dataclass(frozen=True)
class ArchitectureInfo:
    """One activation function (``config.architecture``)."""

    name: str
    """The ``config.architecture`` value (``jumprelu``)."""
    implementation: str
    """``"module:Class"`` of the :class:`~scope_hub.dictionaries.activation.Activation` strategy."""
    summary: str
    """The math, in one line."""
    needs_k: bool = False
    """True when the config must give ``k`` (active latents per token)."""
    stores_threshold: bool = False
    """True when the dictionary stores a per-latent ``threshold`` tensor."""
    trains_threshold: bool = False
    """True when training updates the threshold by gradient (JumpReLU's straight-through estimator);
    BatchTopK's inference threshold is estimated, not trained."""
    sparse_training_codes: bool = False
    """True when every token has exactly k active latents in training (a sparse decode applies)."""
    peer_names: Mapping[str, str] = field(default_factory=dict)
    """The architecture's name in each peer format that spells it differently."""

    @property
    def k_at_inference(self) -> bool:
        """True when k decides the features at inference (TopK); BatchTopK then uses its threshold."""
        return self.needs_k and not self.stores_threshold


_KINDS: dict[str, KindInfo] = {}
_ARCHITECTURES: dict[str, ArchitectureInfo] = {}
KINDS: Mapping[str, KindInfo] = MappingProxyType(_KINDS)
"""Every dictionary type, by name, in registration order (read-only; add with :func:`register_kind`)."""
ARCHITECTURES: Mapping[str, ArchitectureInfo] = MappingProxyType(_ARCHITECTURES)
"""Every activation function, by name (read-only; add with :func:`register_architecture`)."""


# The kind and architecture functions below come in pairs, deliberately parallel: two tables with
# the same registration and lookup rules, kept as plain functions so each signature says its table.


def register_kind(info: KindInfo, *, replace: bool = False) -> KindInfo:
    """Add a dictionary kind to the table (``replace=True`` to redefine one); returns it.

    Example:
        >>> toy = register_kind(KindInfo("toy_doc", "scope_hub.dictionaries.sae:SAE", "a doc example"))
        >>> "toy_doc" in KINDS
        True
        >>> unregister_kind("toy_doc")
    """
    if info.name in _KINDS and not replace:
        raise ConfigError(f"dictionary type {info.name!r} is already registered; pass replace=True to redefine it")
    _KINDS[info.name] = info
    return info


def unregister_kind(name: str) -> None:
    """Remove a kind added by :func:`register_kind` (tests that add a toy kind clean up with it)."""
    _KINDS.pop(name, None)


def register_architecture(info: ArchitectureInfo, *, replace: bool = False) -> ArchitectureInfo:
    """Add an activation function to the table (``replace=True`` to redefine one); returns it."""
    if info.name in _ARCHITECTURES and not replace:
        raise ConfigError(f"architecture {info.name!r} is already registered; pass replace=True to redefine it")
    _ARCHITECTURES[info.name] = info
    return info


def unregister_architecture(name: str) -> None:
    """Remove an architecture added by :func:`register_architecture`."""
    _ARCHITECTURES.pop(name, None)


def kind(name: str) -> KindInfo:
    """The table entry of dictionary type ``name``; a :class:`ConfigError` listing the choices if unknown."""
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown dictionary type {name!r}; use one of: {', '.join(_KINDS)}", field="type", choices=tuple(_KINDS)
        ) from None


def architecture(name: str) -> ArchitectureInfo:
    """The table entry of activation function ``name``; a :class:`ConfigError` listing the choices if unknown."""
    try:
        return _ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown architecture {name!r}; use one of: {', '.join(_ARCHITECTURES)}",
            field="architecture",
            choices=tuple(_ARCHITECTURES),
        ) from None


def kinds_where(**traits: object) -> tuple[str, ...]:
    """Names of the kinds whose attributes equal ``traits`` (``kinds_where(multi_layer=True)``)."""
    return tuple(n for n, info in _KINDS.items() if all(getattr(info, t) == v for t, v in traits.items()))


def architectures_where(**traits: object) -> tuple[str, ...]:
    """Names of the architectures whose attributes equal ``traits`` (``architectures_where(needs_k=True)``)."""
    return tuple(n for n, info in _ARCHITECTURES.items() if all(getattr(info, t) == v for t, v in traits.items()))


def peer_name(name: str, fmt: str) -> str:
    """How peer format ``fmt`` spells our kind or architecture ``name`` (``peer_name("jumprelu", "gemma_scope_2")``)."""
    info = _KINDS.get(name) or _ARCHITECTURES.get(name)
    if info is None:
        raise ConfigError(
            f"{name!r} is neither a dictionary type nor an architecture", choices=(*_KINDS, *_ARCHITECTURES)
        )
    return info.peer_names.get(fmt, name)


def kind_from_peer(fmt: str, peer_name: str) -> str | None:
    """Our type for a peer format's type name (``kind_from_peer("gemma_scope_2", "transcoder")``), else None."""
    for name, info in _KINDS.items():
        if info.peer_names.get(fmt, name) == peer_name:
            return name
    return None


def architecture_from_peer(fmt: str, peer_name: str) -> str | None:
    """Our architecture for a peer format's name (``architecture_from_peer("gemma_scope_2", "jump_relu")``)."""
    for name, info in _ARCHITECTURES.items():
        if info.peer_names.get(fmt, name) == peer_name:
            return name
    return None


def kinds_table() -> str:
    """The Markdown tables of kinds and architectures, as ``docs/architecture.md`` shows them.

    Example:
        >>> kinds_table().splitlines()[2].startswith("| `sae` |")
        True
    """
    rows = [
        "| Type | What it is | Tensors | Layout | Config | Sites (default) | Peer names |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for info in _KINDS.values():
        peers = ", ".join(f"{fmt}: `{name}`" for fmt, name in info.peer_names.items()) or "-"
        sites = " -> ".join(s for s in info.default_sites if s)
        rows.append(
            f"| `{info.name}` | {info.summary} | {'; '.join(info.tensors)} | {info.layout} | "
            f"{', '.join(info.config_fields)} | {sites} | {peers} |"
        )
    rows += ["", "| Architecture | Math | Needs k | Stores threshold | Trains threshold | Peer names |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for arch in _ARCHITECTURES.values():
        peers = ", ".join(f"{fmt}: `{name}`" for fmt, name in arch.peer_names.items()) or "-"
        flags = ["yes" if v else "no" for v in (arch.needs_k, arch.stores_threshold, arch.trains_threshold)]
        rows.append(f"| `{arch.name}` | {arch.summary} | {' | '.join(flags)} | {peers} |")
    return "\n".join(rows)


for _info in (
    KindInfo(
        SAE,
        "scope_hub.dictionaries.sae:SAE",
        "reads one site and reconstructs it",
        reconstructs_input=True,
    ),
    KindInfo(
        TRANSCODER,
        "scope_hub.dictionaries.transcoder:Transcoder",
        "reads one site (mlp_in) and predicts another (mlp_out)",
        default_sites=("mlp_in", "mlp_out"),
        config_fields=("layer", "site_out", "d_out"),
    ),
    KindInfo(
        SKIP_TRANSCODER,
        "scope_hub.dictionaries.skip_transcoder:SkipTranscoder",
        "a transcoder plus an affine skip path x @ affine_skip_connection",
        tensors=(*KindInfo.tensors, "affine_skip_connection [d_in, d_out]"),
        affine_skip="always",
        default_sites=("mlp_in", "mlp_out"),
        config_fields=("layer", "site_out", "d_out"),
        peer_names={GEMMA_SCOPE_2: TRANSCODER},
    ),
    KindInfo(
        CLT,
        "scope_hub.dictionaries.clt:CrossLayerTranscoder",
        "an encoder per layer; layer i decodes into every layer j >= i",
        layout="cross_layer",
        tensors=(
            "per layer i, params_layer_{i}.safetensors: w_enc [d_in, d_sae]",
            "b_enc [d_sae]",
            "w_dec [d_sae, n_layers, d_out] (zeros before layer i)",
            "b_dec [d_out]",
            "optional affine_skip_connection [d_in, d_out]",
        ),
        multi_layer=True,
        affine_skip="optional",
        default_sites=("mlp_in", "mlp_out"),
        config_fields=("layers", "site_out", "d_out"),
    ),
    KindInfo(
        CROSSCODER,
        "scope_hub.dictionaries.crosscoder:Crosscoder",
        "shared latents read from several layers at once (reads only; never spliced)",
        layout="stacked",
        tensors=(
            "w_enc [n_layers, d_in, d_sae]",
            "b_enc [d_sae]",
            "w_dec [d_sae, n_layers, d_out]",
            "b_dec [n_layers, d_out]",
        ),
        reconstructs_input=True,
        multi_layer=True,
        config_fields=("layers",),
    ),
):
    register_kind(_info)

for _arch in (
    ArchitectureInfo(
        JUMPRELU,
        "scope_hub.dictionaries.jumprelu:JumpReLU",
        "f = (pre > threshold) * relu(pre)",
        stores_threshold=True,
        trains_threshold=True,
        peer_names={GEMMA_SCOPE_2: "jump_relu"},
    ),
    ArchitectureInfo(
        TOPK,
        "scope_hub.dictionaries.topk:TopK",
        "keep the k largest of relu(pre) per token",
        needs_k=True,
        sparse_training_codes=True,
    ),
    ArchitectureInfo(
        BATCHTOPK,
        "scope_hub.dictionaries.batchtopk:BatchTopK",
        "keep the k*batch largest over the batch in training; a global threshold at inference",
        needs_k=True,
        stores_threshold=True,
    ),
    ArchitectureInfo(RELU, "scope_hub.dictionaries.relu:ReLU", "f = relu(pre)", peer_names={SAELENS: "standard"}),
):
    register_architecture(_arch)
del _info, _arch
