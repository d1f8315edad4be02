"""Dictionary cards and release cards: YAML front matter (Hugging Face model-card conventions) + markdown.

A **dictionary card** is generated at push from the dictionary's metadata and
any card text the author gives: standard front matter (``license``,
``base_model``, ``library_name``, ``tags``) plus a ``scope_hub`` block (key,
version, site, hookpoints, width, type, architecture, metrics, training data,
config, software), and a body with a metrics table and a copy-paste loading
snippet pinned to the version. A **release card** (``cards/`` in the repo)
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

from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from pydantic import BaseModel, ConfigDict, Field

from scope_hub.errors import CardError
from scope_hub.keys import DictionaryKey, parse_key
from scope_hub.metadata import SCHEMA_VERSION, DictionaryConfig

LIBRARY_NAME = "scope-hub"
REQUIRED_FIELDS = ("base_model", "license")
_METRIC_LABELS = {
    "l0": "L0 (mean active latents)", "fvu": "FVU", "delta_lm_loss": "ΔLM loss (spliced)",
    "delta_lm_loss_error_term": "ΔLM loss (with error term)", "dead_fraction": "dead latents",
    "dense_fraction": "dense latents (>10%)", "eval_tokens": "evaluation tokens",
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
    """Refuse a card that does not state its base model and license."""
    missing = [name for name in REQUIRED_FIELDS if not front.get(name)]
    if missing:
        raise CardError(
            f"{where}: front matter lacks {', '.join(missing)}; add e.g. 'license: apache-2.0' and "
            "'base_model: google/gemma-3-270m' (or pass --license / set config.model)"
        )


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = [(label, metrics[name]) for name, label in _METRIC_LABELS.items() if metrics.get(name) is not None]
    if not rows:
        return "_No evaluation recorded._\n"
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {value:.4g} |" if isinstance(value, float) else f"| {label} | {value} |"
              for label, value in rows]
    return "\n".join(lines) + "\n"


def _snippet(pinned: str, registry_url: str | None) -> str:
    registry = f", registry={registry_url!r}" if registry_url else ""
    return (
        "```python\n"
        "from scope_hub import load_dictionary, ScopedModel\n\n"
        f"sae = load_dictionary({pinned!r}{registry})\n"
        f"model = ScopedModel.from_pretrained({pinned.split(':', 1)[0]!r}, dictionaries=[{pinned!r}])\n"
        "```\n\n"
        f"```bash\nscope-hub pull {pinned}" + (f" --registry {registry_url}" if registry_url else "") + "\n```\n"
    )


def scope_hub_fields(config: DictionaryConfig, key: DictionaryKey, version: int | None) -> dict[str, Any]:
    """The ``scope_hub`` block of a dictionary card's front matter."""
    prov = config.provenance
    return {
        "schema_version": SCHEMA_VERSION,
        "key": str(key.with_ref(f"v{version}") if version else key.unpinned()),
        "type": config.type, "architecture": config.architecture, "site": config.site,
        "site_out": config.site_out, "layer": config.layer, "layers": config.layers,
        "hook_point_in": config.hook_point_in, "hook_point_out": config.hook_point_out,
        "d_in": config.d_in, "d_sae": config.d_sae, "d_out": config.d_out, "k": config.k,
        "width": key.width, "l0_target": config.l0_target,
        "metrics": config.metrics.model_dump(exclude_none=True),
        "training_data": {"dataset": prov.dataset, "sha256": prov.dataset_sha256},
        "base_model_revision": config.model_revision, "source": prov.source,
        "seed": prov.seed, "software": prov.software, "training_config": prov.training_config,
    }


def render_dictionary_card(
    config: DictionaryConfig,
    key: DictionaryKey | str,
    version: int | None,
    *,
    text: str | None = None,
    license: str | None = None,
    registry_url: str | None = None,
) -> str:
    """A dictionary version's card; the author's ``text`` (front matter and/or body) is kept."""
    key = parse_key(key) if isinstance(key, str) else key
    front, body = parse_card(text) if text else ({}, "")
    tags = sorted({*front.get("tags", []), "sparse-autoencoder", "interpretability", config.type, config.architecture})
    front = {"license": license, "base_model": config.model or key.model, **{k: v for k, v in front.items() if v}}
    front.update(library_name=LIBRARY_NAME, tags=tags, scope_hub=scope_hub_fields(config, key, version))
    pinned = str(key.with_ref(f"v{version}") if version else key.unpinned())
    title = f"# {key.unpinned()}" + (f" (v{version})" if version else "")
    where = f"`{config.hook_point_in}`" if config.hook_point_in else f"{config.site} at layer {config.layer}"
    parts = [
        title,
        body.strip() or f"A {config.architecture} {config.type} with {config.d_sae} latents reading {where} "
                        f"of `{front['base_model']}`.",
        "## Metrics\n\n" + _metrics_table(config.metrics.model_dump()),
        "## Load it\n\n" + _snippet(pinned, registry_url),
    ]
    if config.provenance.dataset:
        parts.append(f"## Training data\n\n`{config.provenance.dataset}` (sha256 `{config.provenance.dataset_sha256}`)")
    return compose_card(front, "\n" + "\n\n".join(parts) + "\n")


class ReleaseEntry(BaseModel):
    """One pinned dictionary of a release."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    key: str
    """Key pinned to a version (``...@vN``)."""
    sha256: str | None = None
    """The version's content sha256."""


class ReleaseCard(BaseModel):
    """A whole release: which pinned keys, and how they were made."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    schema_version: int = SCHEMA_VERSION
    """Schema of the release card."""
    name: str
    """Release name (e.g. ``gemma-scope-2-270m-pt-import``)."""
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
        """Front matter + markdown listing every pinned key."""
        front = {"license": self.license, "base_model": self.base_model, "library_name": LIBRARY_NAME,
                 "tags": ["scope-hub-release"], "scope_hub_release": self.model_dump(exclude={"description"})}
        lines = [f"# {self.name}", "", self.description.strip(), "", "| key | sha256 |", "|---|---|"]
        lines += [f"| `{e.key}` | `{(e.sha256 or '')[:12]}` |" for e in self.entries]
        return compose_card(front, "\n" + "\n".join(lines) + "\n")

    @classmethod
    def parse(cls, text: str, where: str = "release card") -> ReleaseCard:
        """Inverse of :meth:`render` (the description is the body's prose before the table)."""
        front, body = parse_card(text)
        validate_card(front, where)
        data = front.get("scope_hub_release")
        if not isinstance(data, dict):
            raise CardError(f"{where}: no 'scope_hub_release' block in the front matter; build it with ReleaseCard")
        prose = body.split("\n| key | sha256 |", 1)[0]
        description = prose.split("\n", 2)[2].strip() if prose.lstrip().startswith("# ") else prose.strip()
        return cls.model_validate({**data, "description": description})
