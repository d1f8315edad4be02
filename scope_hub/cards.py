"""Dictionary cards and release cards: YAML front matter (Hugging Face model-card conventions) + markdown.

A **dictionary card** is generated at push from the dictionary's metadata and
any card text the author gives (the *card source*): standard front matter
(``license``, ``base_model``, ``library_name``, ``tags``) plus a ``scope_hub``
block (key, version, site, hookpoints, width, type, architecture, metrics,
training data, config, software), and a body with a metrics table and a
copy-paste loading snippet pinned to the version. The author's text sits between
``<!-- scope-hub:card-text -->`` markers, so a rendered card given back as a
source (a pulled folder pushed again) yields the same :class:`CardSource` and
the same :attr:`CardSource.digest`. A **release card** (``cards/`` in the repo)
describes a set of pinned keys and how they were made. Torch-free.

Example:
    >>> from scope_hub.metadata import DictionaryConfig
    >>> from scope_hub.keys import parse_key
    >>> cfg = DictionaryConfig(type="sae", architecture="jumprelu", d_in=640, d_sae=16384,
    ...                        model="google/gemma-3-270m", site="resid_post", layer=6)
    >>> key = parse_key("google/gemma-3-270m:resid_post/layer_6/width_16k/sae")
    >>> text = render_dictionary_card(cfg, key, version=3, license="apache-2.0")
    >>> front, body = parse_card(text)
    >>> front["base_model"], front["scope_hub"]["key"], "@v3" in body
    ('google/gemma-3-270m', 'google/gemma-3-270m:resid_post/layer_6/width_16k/sae@v3', True)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from scope_hub.errors import CardError
from scope_hub.keys import DictionaryKey, parse_key
from scope_hub.metadata import SCHEMA_VERSION, DictionaryConfig
from scope_hub.redaction import redact_url

LIBRARY_NAME = "scope-hub"
REQUIRED_FIELDS = ("base_model", "license")
TEXT_BEGIN = "<!-- scope-hub:card-text -->"
TEXT_END = "<!-- /scope-hub:card-text -->"
GENERATED_FIELDS = ("library_name", "scope_hub")
"""Front matter fields a rendered dictionary card generates (never taken from the source)."""
_METRIC_LABELS = {
    "l0": "L0 (mean active latents)",
    "fvu": "FVU",
    "delta_lm_loss": "ΔLM loss (spliced)",
    "delta_lm_loss_error_term": "ΔLM loss (with error term)",
    "dead_fraction": "dead latents",
    "dense_fraction": "dense latents (>10%)",
    "eval_tokens": "evaluation tokens",
}


def parse_card(text: str) -> tuple[dict[str, Any], str]:
    """Split a card into (front matter dict, markdown body)."""
    if not text.startswith("---"):
        return {}, text
    card = ModelCard(text, ignore_metadata_errors=True)
    return card.data.to_dict(), card.text


def compose_card(front: dict[str, Any], body: str) -> str:
    """Front matter + body, the inverse of :func:`parse_card`."""
    yaml = ModelCardData(**front).to_yaml()
    return f"---\n{yaml}\n---\n{body if body.startswith(chr(10)) else chr(10) + body}"


def validate_card(front: dict[str, Any], where: str = "card") -> None:
    """Refuse a card that does not state its base model and license (one-line CardError)."""
    missing = [name for name in REQUIRED_FIELDS if not front.get(name)]
    if missing:
        hints = {
            "license": "'license: apache-2.0' (or pass --license)",
            "base_model": "'base_model: google/gemma-3-270m' (or set config.model)",
        }
        raise CardError(
            f"{where}: front matter lacks {' and '.join(missing)}; state e.g. "
            + " and ".join(hints[name] for name in missing)
            + " in the card's front matter"
        )


def auto_tags(config: DictionaryConfig) -> set[str]:
    """Tags every dictionary card carries."""
    return {"sparse-autoencoder", "interpretability", config.type, config.architecture}


def is_local_path(name: str | None) -> bool:
    """True when a model name is a machine's path rather than a Hub id (a card must not publish it).

    Example:
        >>> is_local_path("/home/me/models/gemma"), is_local_path("./gemma"), is_local_path("google/gemma-3-270m")
        (True, True, False)
    """
    if not name:
        return False
    return name.startswith(("/", ".", "~", "\\")) or ":" in name[:3] or name.count("/") > 1 or Path(name).is_dir()


def public_source_uri(uri: str | None) -> str | None:
    """Where a converted dictionary came from, as a card may say it: a URL without credentials,
    or only the folder's name for a local path (no local path of the pusher is published).

    Example:
        >>> public_source_uri("/home/me/saes/layer_6"), public_source_uri("hf://org/repo/f@abc")
        ('layer_6', 'hf://org/repo/f@abc')
    """
    if not uri:
        return uri
    if "://" in uri:
        return public_url(uri)
    return Path(uri).name if is_local_path(uri) else uri


def default_base_model(config: DictionaryConfig, key: DictionaryKey) -> str | None:
    """``base_model`` of a card whose source does not say: ``config.model``, else the key's model,
    skipping local paths (None when both are: the card source must then state it)."""
    return next((m for m in (config.model, key.model) if m and not is_local_path(m)), None)


def public_url(url: str | None) -> str | None:
    """A registry URL fit for a card: user info, query and fragment dropped (no secret can leak).

    Example:
        >>> public_url("s3://user:secret@bucket/reg?token=x")
        's3://bucket/reg'
    """
    return redact_url(url) if url else None


def _tag_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(t) for t in value] if isinstance(value, (list, tuple, set)) else [str(value)]


@dataclass(frozen=True)
class CardSource:
    """What a dictionary card takes from its author: front matter fields and markdown text.

    Built from a card *source* (``--card FILE`` or the folder's README.md, with or without
    front matter; a card scope-hub rendered earlier works too). Generated fields
    (``library_name``, ``scope_hub``, the automatic tags, a ``base_model`` equal to the
    default) are dropped and the text is whitespace-trimmed, so :attr:`digest` changes
    exactly when the rendered card would change for a reason other than the version,
    metadata or registry URL.

    Example:
        >>> from scope_hub.metadata import DictionaryConfig
        >>> cfg = DictionaryConfig(type="sae", architecture="relu", d_in=4, d_sae=8, model="m")
        >>> key = parse_key("m:resid_post/layer_1/width_8/sae")
        >>> src = CardSource.parse("---\\nlicense: mit\\n---\\nHello.\\n", cfg, key)
        >>> src.front, src.text
        ({'license': 'mit'}, 'Hello.')
        >>> CardSource.parse(render_dictionary_card(cfg, key, 4, text="---\\nlicense: mit\\n---\\nHello."), cfg, key) == src
        True
    """

    front: dict[str, Any] = field(default_factory=dict)
    """Author front matter (license, extra tags, datasets, ...), generated fields removed."""
    text: str = ""
    """Author markdown, stripped ("" when the source has none)."""

    @classmethod
    def parse(
        cls,
        source: str | None,
        config: DictionaryConfig,
        key: DictionaryKey | str,
        *,
        license: str | None = None,
        strict: bool = False,
        where: str = "card",
    ) -> CardSource:
        """Author parts of ``source``; ``license`` fills a missing license (``strict``: a different one is an error)."""
        key = parse_key(key) if isinstance(key, str) else key
        front, body = parse_card(source or "")
        generated = isinstance(front.get("scope_hub"), dict)
        front = {k: v for k, v in front.items() if v not in (None, "", [], {}) and k not in GENERATED_FIELDS}
        tags = sorted(set(_tag_list(front.pop("tags", None))) - auto_tags(config))
        if tags:
            front["tags"] = tags
        if front.get("base_model") == default_base_model(config, key):
            del front["base_model"]
        if license:
            stated = front.get("license")
            if stated and stated != license and strict:
                raise CardError(
                    f"{where}: front matter says license {stated!r} but {license!r} was given; keep one of them"
                )
            front.setdefault("license", license)
        if TEXT_BEGIN in body and TEXT_END in body:
            text = body.split(TEXT_BEGIN, 1)[1].split(TEXT_END, 1)[0]
        else:
            text = "" if generated else body  # a rendered card without markers holds no author text
        return cls(front=front, text=text.strip())

    def canonical(self) -> bytes:
        """The bytes :attr:`digest` hashes: canonical JSON of the front matter and the text."""
        return json.dumps(
            {"front": self.front, "text": self.text},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
            default=str,
        ).encode()

    @property
    def digest(self) -> str:
        """sha256 hex of :meth:`canonical` (what a version's ``card_source_sha256`` records)."""
        return hashlib.sha256(self.canonical()).hexdigest()


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [(label, metrics[name]) for name, label in _METRIC_LABELS.items() if metrics.get(name) is not None]
    if not rows:
        return "_No evaluation recorded._\n"
    lines = ["| metric | value |", "|---|---|"]
    lines += [
        f"| {label} | {value:.4g} |" if isinstance(value, float) else f"| {label} | {value} |" for label, value in rows
    ]
    return "\n".join(lines) + "\n"


def _snippet(pinned: str, registry_url: str | None, model_revision: str | None = None) -> str:
    registry = f", registry={registry_url!r}" if registry_url else ""
    revision = f", revision={model_revision!r}" if model_revision else ""
    return (
        "```python\n"
        "from scope_hub import load_dictionary, ScopedModel\n\n"
        f"dictionary = load_dictionary({pinned!r}{registry})\n"
        f"model = ScopedModel.from_pretrained({pinned.split(':', 1)[0]!r}, dictionaries=[{pinned!r}]{registry}{revision})\n"
        "```\n\n"
        f"```bash\nscope-hub pull {pinned}" + (f" --registry {registry_url}" if registry_url else "") + "\n```\n"
    )


def scope_hub_fields(
    config: DictionaryConfig, key: DictionaryKey, version: int | None, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """The ``scope_hub`` block of a dictionary card's front matter (``files``: name -> sha256 of the
    version's other files, which :func:`scope_hub.registry.content.card_problems` checks)."""
    prov = config.provenance
    return {
        "schema_version": SCHEMA_VERSION,
        "key": str(key.with_ref(f"v{version}") if version else key.unpinned()),
        "type": config.type,
        "architecture": config.architecture,
        "site": config.site,
        "site_out": config.site_out,
        "layer": config.layer,
        "layers": config.layers,
        "hook_point_in": config.hook_point_in,
        "hook_point_out": config.hook_point_out,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "d_out": config.d_out,
        "k": config.k,
        "width": key.width,
        "l0_target": config.l0_target,
        "metrics": config.metrics.model_dump(exclude_none=True),
        "training_data": {"dataset": prov.dataset, "sha256": prov.dataset_sha256},
        "base_model_revision": config.model_revision,
        "source": prov.source,
        "seed": prov.seed,
        "software": prov.software,
        "training_config": prov.training_config,
        "source_format": prov.source if prov.source not in ("unknown", "trained") else None,
        "source_uri": public_source_uri(prov.source_uri),
        "source_files": prov.source_files,
        "base_model_weights": prov.model_weights,
        "files": dict(sorted(files.items())) if files else None,
    }


def render_dictionary_card(
    config: DictionaryConfig,
    key: DictionaryKey | str,
    version: int | None,
    *,
    text: str | CardSource | None = None,
    license: str | None = None,
    registry_url: str | None = None,
    files: dict[str, str] | None = None,
) -> str:
    """A dictionary version's card; the author's ``text`` (front matter and/or body) is kept.

    ``text`` is a card source (plain markdown, markdown with front matter, or a card rendered
    earlier) or a parsed :class:`CardSource`; ``license`` applies when the source states none.
    ``files``: sha256 of each published file (recorded in the front matter).
    """
    key = parse_key(key) if isinstance(key, str) else key
    source = text if isinstance(text, CardSource) else CardSource.parse(text, config, key, license=license)
    registry_url = public_url(registry_url)
    front: dict[str, Any] = {"license": license, "base_model": default_base_model(config, key), **source.front}
    tags = sorted(set(_tag_list(source.front.get("tags"))) | auto_tags(config))
    front.update(library_name=LIBRARY_NAME, tags=tags, scope_hub=scope_hub_fields(config, key, version, files))
    pinned = str(key.with_ref(f"v{version}") if version else key.unpinned())
    title = f"# {key.unpinned()}" + (f" (v{version})" if version else "")
    layer = config.layer if config.layer is not None else key.layer
    where = f"`{config.hook_point_in}`" if config.hook_point_in else f"{config.site or key.site} at layer {layer}"
    default = (
        f"A {config.architecture} {config.type} with {config.d_sae} latents reading {where} of `{front['base_model']}`."
    )
    parts = [
        title,
        f"{TEXT_BEGIN}\n{source.text}\n{TEXT_END}" if source.text else default,
        "## Metrics\n\n" + _metrics_table(config.metrics.model_dump()).rstrip(),
        "## Load it\n\n" + _snippet(pinned, registry_url, config.model_revision).rstrip(),
    ]
    weights = config.provenance.model_weights
    if weights:
        parts.append(
            "## Base model weights\n\nTrained on a converted local copy of `"
            + str(front["base_model"])
            + "`, not its Hub release: "
            + ", ".join(f"{k} `{v}`" for k, v in sorted(weights.items()))
        )
    if config.provenance.dataset:
        parts.append(f"## Training data\n\n`{config.provenance.dataset}` (sha256 `{config.provenance.dataset_sha256}`)")
    return compose_card({k: v for k, v in front.items() if v is not None}, "\n" + "\n\n".join(parts) + "\n")


class ReleaseEntry(BaseModel):
    """One pinned dictionary of a release."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    key: str
    """Key pinned to a version (``...@vN``)."""
    sha256: str | None = None
    """The version's content sha256 (None until the release is built against a registry)."""

    @field_validator("key")
    @classmethod
    def _pinned(cls, value: str) -> str:
        key = parse_key(value)
        ref = key.ref or ""
        if not ref.startswith("v") or not ref[1:].isdigit():
            raise ValueError(f"release entries pin an exact version, e.g. {key.unpinned()}@v1; got {value!r}")
        return str(key)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value)):
            raise ValueError(f"sha256 must be 64 lowercase hex digits (a version's content_sha256), got {value!r}")
        return value


_TABLE_HEADER = "| key | sha256 |"


class ReleaseCard(BaseModel):
    """A whole release: which pinned keys, and how they were made.

    Example:
        >>> card = ReleaseCard(name="demo", license="mit", base_model=["m"],
        ...                    entries=[ReleaseEntry(key="m:resid_post/layer_1/width_8/sae@v1")])
        >>> ReleaseCard.parse(card.render()) == card
        True
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    schema_version: int = SCHEMA_VERSION
    """Schema of the release card."""
    name: str
    """Release name (e.g. ``gemma-scope-2-270m-pt-import``)."""
    version: int | None = Field(default=None, ge=1)
    """The release's own version once published to a registry (``releases/<name>/vN.md``)."""
    license: str
    """License of the released weights."""
    base_model: list[str] = Field(min_length=1)
    """Base models the dictionaries attach to."""
    registry: str | None = None
    """Registry URL the keys resolve in."""
    entries: list[ReleaseEntry] = Field(min_length=1)
    """Pinned dictionaries."""
    description: str = ""
    """Markdown: what the release is and how it was made."""

    def render(self) -> str:
        """Front matter + markdown listing every pinned key, and how to lock them."""
        registry = public_url(self.registry)
        data = self.model_dump(exclude={"description"}, exclude_none=True)
        if registry:
            data["registry"] = registry
        front = {
            "license": self.license,
            "base_model": self.base_model,
            "library_name": LIBRARY_NAME,
            "tags": ["scope-hub-release"],
            "scope_hub_release": data,
        }
        title = f"# {self.name}" + (f" (v{self.version})" if self.version else "")
        lines = [title, ""] + ([self.description.strip(), ""] if self.description.strip() else [])
        lines += [_TABLE_HEADER, "|---|---|"]
        lines += [
            f"| `{e.key}` | " + (f"`{e.sha256[:12]}`" if e.sha256 else "not yet built") + " |" for e in self.entries
        ]
        where = f" --registry {registry}" if registry else ""
        lines += [
            "",
            "Pin every dictionary of this release in one lockfile:",
            "",
            "```bash",
            f"scope-hub lock {' '.join(e.key for e in self.entries)}{where}",
            "```",
        ]
        return compose_card(front, "\n" + "\n".join(lines) + "\n")

    @classmethod
    def parse(cls, text: str, where: str = "release card") -> ReleaseCard:
        """Inverse of :meth:`render` (the description is the body's prose before the table)."""
        front, body = parse_card(text)
        validate_card(front, where)
        data = front.get("scope_hub_release")
        if not isinstance(data, dict):
            raise CardError(f"{where}: no 'scope_hub_release' block in the front matter; build it with ReleaseCard")
        prose = body.split(f"\n{_TABLE_HEADER}", 1)[0]
        description = prose.split("\n", 2)[2].strip() if prose.lstrip().startswith("# ") else prose.strip()
        try:
            return cls.model_validate({**data, "description": description})
        except ValidationError as exc:  # one line naming the fields
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise CardError(f"{where}: {problems}") from None
