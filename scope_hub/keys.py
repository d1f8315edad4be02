"""Registry keys and refs: the public naming contract of scope-hub.

Grammar (DESIGN.md section 2)::

    {model}:{site}/layer_{layer}/width_{width}/{type}[/{variant}][@{ref}]

* ``model``   a Hugging Face Hub id (``google/gemma-3-270m``) or a local name;
* ``site``    one of :data:`SITES`;
* ``layer``   an integer, ``all``, or a dash-joined list of integers for
  dictionaries that read several chosen layers (``5-9-12-15`` for a crosscoder);
* ``width``   ``16k``, ``65k``, ``262k``, ``1m`` or a plain integer (``16K`` is read as ``16k``);
* ``type``    a dictionary type of :data:`scope_hub.kinds.KINDS`;
* ``variant`` optional label (``l0_small``, ``l0_big_affine``, ``seed_1`` ...);
* ``ref``     ``vN`` (immutable), ``latest`` (moves), ``sha256:<12+ hex>`` (content pin).

Parsing happens once, into a frozen :class:`DictionaryKey`; ``str()`` gives the
canonical form back. This module is torch-free.

Example:
    >>> key = parse_key("google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small@v2")
    >>> key.layer, key.width, key.variant, key.ref
    (12, '16k', 'l0_small', 'v2')
    >>> str(key.unpinned())
    'google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small'
    >>> key.path
    'google--gemma-3-270m/resid_post/layer_12/width_16k/sae/l0_small'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

from scope_hub.errors import KeyParseError
from scope_hub.kinds import KINDS
from scope_hub.kinds import SITES as MODEL_SITES

SITES: tuple[str, ...] = (*MODEL_SITES, "mlp")
"""Key sites: every model site, plus ``mlp`` for transcoders that read mlp_in and write mlp_out."""
GOOD_EXAMPLE = "google/gemma-3-270m:resid_post/layer_12/width_16k/sae/l0_small@v2"

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,95}[A-Za-z0-9])?"
_MODEL_RE = re.compile(rf"^{_NAME}(?:/{_NAME})?$")
_LAYER_RE = re.compile(r"^(?:all|\d{1,4}(?:-\d{1,4})*)$")
_WIDTH_RE = re.compile(r"^[1-9]\d{0,9}[km]?$")
_VARIANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^v([1-9]\d{0,8})$")
_SHA_REF_RE = re.compile(r"^sha256:([0-9a-f]{12,64})$")


def _fail(text: str, part: str, why: str) -> KeyParseError:
    return KeyParseError(
        f"bad key {text!r}: {part} {why}; a good key looks like {GOOD_EXAMPLE!r}",
        key=text,
        part=part,
        example=GOOD_EXAMPLE,
    )


def parse_ref(ref: str) -> str:
    """Validate a ref (``vN``, ``latest`` or ``sha256:<12+ hex>``) and return it.

    Example:
        >>> parse_ref("v3"), parse_ref("latest")
        ('v3', 'latest')
    """
    if ref == "latest" or _VERSION_RE.match(ref) or _SHA_REF_RE.match(ref):
        return ref
    raise KeyParseError(
        f"bad ref {ref!r}: use 'vN' (e.g. v2), 'latest', or 'sha256:' followed by 12-64 lowercase hex digits"
    )


def version_number(ref: str) -> int | None:
    """The integer N of a ``vN`` ref, else None.

    Example:
        >>> version_number("v12"), version_number("latest")
        (12, None)
    """
    match = _VERSION_RE.match(ref)
    return int(match.group(1)) if match else None


def width_label(d_sae: int) -> str:
    """The width label Gemma Scope uses for a dictionary size (16384 -> ``16k``).

    Powers of two are labelled by their decimal thousands/millions, truncated,
    as in Gemma Scope (65536 -> ``65k``, 262144 -> ``262k``, 1048576 -> ``1m``);
    other sizes are written as plain integers.

    Example:
        >>> [width_label(n) for n in (16384, 65536, 262144, 1048576, 3000)]
        ['16k', '65k', '262k', '1m', '3000']
    """
    if d_sae >= 1024 and d_sae & (d_sae - 1) == 0:
        return f"{d_sae // 1_000_000}m" if d_sae >= 1_000_000 else f"{d_sae // 1000}k"
    return str(d_sae)


@dataclass(frozen=True)
class DictionaryKey:
    """A parsed registry key, optionally carrying a ref. Immutable and hashable."""

    model: str
    """Base model: a Hub id ``org/name`` or a local name."""
    site: str
    """Where in the model the dictionary reads (one of SITES)."""
    layer: int | str
    """Layer index, ``all``, or a dash-joined list like ``5-9-12-15``."""
    width: str
    """Width label (``16k``) or plain integer string."""
    type: str
    """Dictionary type, a name in scope_hub.kinds.KINDS."""
    variant: str | None = None
    """Optional label separating dictionaries that share the rest of the key."""
    ref: str | None = None
    """Version ref; None means ``latest``."""

    def __post_init__(self) -> None:
        text = self._body()
        if "--" in self.model or not _MODEL_RE.match(self.model):
            raise _fail(text, "model", f"{self.model!r} must be 'org/name' or 'name' of letters, digits, '.', '_', '-'")
        if self.site not in SITES:
            raise _fail(text, "site", f"{self.site!r} must be one of {', '.join(SITES)}")
        if not _LAYER_RE.match(str(self.layer)):
            raise _fail(text, "layer", f"{self.layer!r} must be an integer, 'all', or integers joined by '-'")
        if isinstance(self.layer, str) and self.layer.isdigit():
            object.__setattr__(self, "layer", int(self.layer))
        if _WIDTH_RE.match(self.width.lower()):  # 16K and 1M mean 16k and 1m
            object.__setattr__(self, "width", self.width.lower())
        if not _WIDTH_RE.match(self.width):
            raise _fail(text, "width", f"{self.width!r} must be like 16k, 65k, 262k, 1m or an integer")
        if self.type not in KINDS:
            raise _fail(text, "type", f"{self.type!r} must be one of {', '.join(KINDS)}")
        if self.variant is not None and (not _VARIANT_RE.match(self.variant) or ".." in self.variant):
            raise _fail(text, "variant", f"{self.variant!r} must be letters, digits, '_', '.', '-' (at most 64)")
        if self.ref is not None:
            parse_ref(self.ref)

    def _body(self) -> str:
        tail = f"/{self.variant}" if self.variant else ""
        return f"{self.model}:{self.site}/layer_{self.layer}/width_{self.width}/{self.type}{tail}"

    def __str__(self) -> str:
        return self._body() + (f"@{self.ref}" if self.ref else "")

    @property
    def path(self) -> str:
        """Storage path of this key (ref excluded); safe as a relative path on any store."""
        tail = f"/{self.variant}" if self.variant else ""
        model = self.model.replace("/", "--")
        return f"{model}/{self.site}/layer_{self.layer}/width_{self.width}/{self.type}{tail}"

    @property
    def layers(self) -> list[int] | None:
        """The layer list for integer or dash-joined layers; None for ``all``."""
        if self.layer == "all":
            return None
        return [int(part) for part in str(self.layer).split("-")]

    def with_ref(self, ref: str | None) -> DictionaryKey:
        """The same key pinned to ``ref`` (None drops the ref)."""
        return replace(self, ref=ref)

    def unpinned(self) -> DictionaryKey:
        """The same key without a ref."""
        return replace(self, ref=None)

    @classmethod
    def from_path(cls, path: str) -> DictionaryKey:
        """Inverse of :attr:`path`."""
        parts = path.strip("/").split("/")
        if len(parts) not in (5, 6):
            raise KeyParseError(f"bad key path {path!r}: expected model/site/layer_L/width_W/type[/variant]")
        model = parts[0].replace("--", "/")
        variant = parts[5] if len(parts) == 6 else None
        return parse_key(f"{model}:{parts[1]}/{parts[2]}/{parts[3]}/{parts[4]}" + (f"/{variant}" if variant else ""))


def close_keys(wanted: str | DictionaryKey, known: Iterable[str], n: int = 5) -> list[str]:
    """Up to ``n`` of the ``known`` keys a user asking for ``wanted`` probably meant.

    First the keys that only add a variant (``.../sae`` when just ``.../sae/l0_small`` exists),
    then the most similar spellings.

    Example:
        >>> known = ["m:resid_post/layer_12/width_16k/sae/l0_small", "m:resid_post/layer_6/width_16k/sae/mine"]
        >>> close_keys("m:resid_post/layer_12/width_16k/sae", known)
        ['m:resid_post/layer_12/width_16k/sae/l0_small']
        >>> close_keys("m:resid_post/layer_6/width_16k/sae/mien", known)
        ['m:resid_post/layer_6/width_16k/sae/mine']
    """
    text = str(wanted.unpinned() if isinstance(wanted, DictionaryKey) else wanted)
    known = list(known)
    extended = sorted(k for k in known if k.startswith(text + "/"))
    similar = difflib.get_close_matches(text, known, n=n, cutoff=0.9)
    return list(dict.fromkeys(extended + similar))[:n]


def parse_key(text: str) -> DictionaryKey:
    """Parse a key string (optionally ``@ref``) into a :class:`DictionaryKey`.

    Raises :class:`~scope_hub.errors.KeyParseError` naming the bad part.

    Example:
        >>> parse_key("google/gemma-3-270m-it:mlp/layer_all/width_262k/clt@sha256:3f9a2c1b7e44").ref
        'sha256:3f9a2c1b7e44'
    """
    if not isinstance(text, str) or not text or len(text) > 512 or text != text.strip():
        raise KeyParseError(
            f"bad key {text!r}: must be a non-empty string without surrounding spaces; "
            f"a good key looks like {GOOD_EXAMPLE!r}"
        )
    body, _, ref = text.partition("@")
    if "@" in ref:
        raise _fail(text, "ref", "appears twice ('@' may occur once)")
    model, sep, rest = body.partition(":")
    if not sep:
        raise _fail(text, "model", "is not followed by ':' and the site")
    parts = rest.split("/")
    if len(parts) not in (4, 5):
        raise _fail(
            text,
            "path",
            f"has {len(parts)} '/'-separated parts after ':', expected site/layer_L/width_W/type[/variant]",
        )
    site, layer, width, type_ = parts[:4]
    if not layer.startswith("layer_"):
        raise _fail(text, "layer", f"{layer!r} must start with 'layer_'")
    if not width.startswith("width_"):
        raise _fail(text, "width", f"{width!r} must start with 'width_'")
    if sep and ref == "" and text.endswith("@"):
        raise _fail(text, "ref", "is empty after '@'")
    return DictionaryKey(
        model=model,
        site=site,
        layer=layer[len("layer_") :],
        width=width[len("width_") :],
        type=type_,
        variant=parts[4] if len(parts) == 5 else None,
        ref=ref or None,
    )
