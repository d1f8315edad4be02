"""Pydantic metadata models: what a dictionary is, where it came from, how it scores.

Every model forbids unknown fields (a typo is an error, not silently dropped)
and carries field docstrings. :class:`DictionaryConfig` is what ``config.json``
holds in a native folder; :class:`Manifest` is what the registry writes for
each immutable version. Torch-free.

Example:
    >>> cfg = DictionaryConfig(type="sae", architecture="jumprelu", d_in=640, d_sae=16384,
    ...                        model="google/gemma-3-270m", site="resid_post", layer=12)
    >>> cfg.d_out, cfg.schema_version
    (640, 1)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from scope_hub.kinds import KINDS, Site, architecture, kind

SCHEMA_VERSION = 1
"""Current schema of config.json and manifests; older ones are migrated on read."""

DictionaryType = Annotated[str, AfterValidator(lambda name: kind(name).name)]
"""A name in :data:`scope_hub.kinds.KINDS` (checked against the table, so registered kinds load)."""
Architecture = Annotated[str, AfterValidator(lambda name: architecture(name).name)]
"""A name in :data:`scope_hub.kinds.ARCHITECTURES`."""
DType = Literal["float32", "bfloat16", "float16", "float64"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=False)


class Normalization(_Strict):
    """How activations are scaled before encoding and after decoding.

    ``constant_scale`` multiplies inputs by ``scale_in`` before the encoder and
    divides the reconstruction by ``scale_out`` (e.g. the factor that gives the
    training activations unit mean norm). It can be folded into the weights,
    after which ``kind`` becomes ``none``.
    """

    kind: Literal["none", "constant_scale"] = "none"
    """``none``: use activations as they are; ``constant_scale``: see class docstring."""
    scale_in: float = 1.0
    """Factor applied to inputs before encoding."""
    scale_out: float = 1.0
    """Factor the decoder's output space was scaled by; the reconstruction is divided by it."""


class Metrics(_Strict):
    """Evaluation results; every field optional, filled by trainers or evals."""

    l0: float | None = None
    """Mean number of active latents per token."""
    fvu: float | None = None
    """Fraction of variance unexplained by the reconstruction."""
    delta_lm_loss: float | None = None
    """Increase in next-token cross-entropy when spliced into the model (no error term)."""
    delta_lm_loss_error_term: float | None = None
    """The same with the exact error added back (should be ~0)."""
    dead_fraction: float | None = None
    """Fraction of latents never active on the evaluation tokens."""
    dense_fraction: float | None = None
    """Fraction of latents active on more than 10% of evaluation tokens."""
    eval_tokens: int | None = None
    """Number of tokens the metrics were computed on."""
    per_layer: dict[str, dict[str, float]] | None = None
    """Per-layer metrics for multi-layer dictionaries, keyed by layer index."""


class Provenance(_Strict):
    """Where a dictionary came from: enough to reproduce or audit it."""

    source: str = "unknown"
    """``trained``, ``gemma-scope-2``, ``saelens``, ``sparsify``, ... ."""
    source_uri: str | None = None
    """Original location (Hub repo + folder, file path, registry key)."""
    dataset: str | None = None
    """Training data identifier."""
    dataset_sha256: str | None = None
    """Hash of the training data as consumed."""
    seed: int | None = None
    """Training seed."""
    training_config: dict[str, Any] | None = None
    """Full trainer configuration."""
    software: dict[str, str] | None = None
    """Package versions at creation time."""
    created_at: str | None = None
    """ISO 8601 UTC timestamp."""
    source_files: dict[str, str] | None = None
    """sha256 of each file of the folder a converted dictionary was read from (file name -> hex)."""
    model_weights: dict[str, str] | None = None
    """When the base model's weights were not its Hub release but a converted or dequantized local
    copy: what they were (e.g. ``{"format": "gguf", "quantization": "Q4_K_M", "gguf_sha256": ...}``)."""


class DictionaryConfig(_Strict):
    """Everything needed to rebuild a dictionary from its tensors (``config.json``).

    Single-layer dictionaries set ``layer``; CLTs and crosscoders set ``layers``
    and may write hook points as templates containing ``{layer}``.
    """

    schema_version: int = SCHEMA_VERSION
    """Version of this schema; older versions are migrated when read."""
    type: DictionaryType
    """What the dictionary reads and writes: sae, transcoder, skip_transcoder, clt, crosscoder."""
    architecture: Architecture
    """Activation function: jumprelu, topk, batchtopk, relu."""
    d_in: int = Field(gt=0)
    """Input width (per layer for multi-layer dictionaries)."""
    d_sae: int = Field(gt=0)
    """Number of latents."""
    d_out: int = Field(default_factory=lambda data: data.get("d_in"), gt=0)
    """Output width; defaults to d_in."""
    k: int | None = Field(default=None, gt=0)
    """Active latents per token for topk / batchtopk."""
    model: str | None = None
    """Base model id (Hub id or local name)."""
    model_revision: str | None = None
    """Base model revision the dictionary was trained on."""
    site: Site | None = None
    """Input site (resid_pre, resid_post, attn_out, mlp_in, mlp_out)."""
    site_out: Site | None = None
    """Output site for transcoders; defaults to ``site``."""
    layer: int | None = Field(default=None, ge=0)
    """Layer of a single-layer dictionary."""
    layers: list[int] | None = None
    """Layers of a CLT (source layers, in order) or crosscoder."""
    hook_point_in: str | None = None
    """Explicit transformers module path + ``.input``/``.output`` the encoder reads."""
    hook_point_out: str | None = None
    """Explicit hook point the decoder writes (transcoders); defaults to hook_point_in."""
    width_label: str | None = None
    """Width as published (16k, 262k ...)."""
    variant: str | None = None
    """Published variant label (l0_small, l0_big_affine ...)."""
    affine_skip: bool = False
    """Whether each encoder layer also has an affine skip path (always true for skip_transcoder)."""
    l0_target: float | None = None
    """Target L0 used in training."""
    normalization: Normalization = Field(default_factory=Normalization)
    """Input/output scaling."""
    dtype: DType = "float32"
    """Storage dtype of the weights."""
    matryoshka_groups: list[int] | None = None
    """Sizes of the nested latent groups of a Matryoshka dictionary, in order; sum = d_sae."""
    metrics: Metrics = Field(default_factory=Metrics)
    """Evaluation results."""
    provenance: Provenance = Field(default_factory=Provenance)
    """Origin of the dictionary."""
    source_config: dict[str, Any] | None = None
    """A foreign config.json kept verbatim (e.g. Gemma Scope 2's), for audit."""

    @model_validator(mode="after")
    def _check_consistency(self) -> DictionaryConfig:
        info = kind(self.type)
        if info.affine_skip == "always":
            self.affine_skip = True
        if self.affine_skip and info.affine_skip == "never":
            with_skip = ", ".join(n for n, k in KINDS.items() if k.affine_skip != "never")
            raise ValueError(f"affine_skip is for {with_skip}, not {self.type} (use a type with a skip path)")
        if architecture(self.architecture).needs_k and self.k is None:
            raise ValueError(f"architecture {self.architecture} needs k (active latents per token)")
        if info.multi_layer and not self.layers:
            raise ValueError(f"type {self.type} needs layers (the list of layers it spans)")
        if info.reconstructs_input and not info.multi_layer and self.d_out != self.d_in:
            raise ValueError(f"a {self.type} reconstructs its input: d_out must equal d_in (use type transcoder)")
        if self.matryoshka_groups is not None and (
            any(g <= 0 for g in self.matryoshka_groups) or sum(self.matryoshka_groups) != self.d_sae
        ):
            raise ValueError(f"matryoshka_groups must be positive and sum to d_sae={self.d_sae}")
        return self

    @property
    def n_layers(self) -> int:
        """Number of layers spanned (1 for single-layer dictionaries)."""
        return len(self.layers) if self.layers else 1

    def hook_points(self) -> tuple[str | None, str | None]:
        """Explicit (in, out) hook points, ``out`` defaulting to ``in`` (templates unexpanded)."""
        return self.hook_point_in, self.hook_point_out or self.hook_point_in


class FileEntry(_Strict):
    """One file of a published version."""

    path: str
    """Path inside the dictionary folder (e.g. ``params.safetensors``)."""
    sha256: str
    """Hex sha256 of the file's bytes; also its blob name."""
    size: int = Field(ge=0)
    """Size in bytes."""


class Manifest(_Strict):
    """The record that makes a registry version exist: its files and metadata."""

    schema_version: int = SCHEMA_VERSION
    """Schema version of the manifest."""
    key: str
    """Canonical key without ref."""
    version: int = Field(ge=1)
    """The N of ``vN``."""
    files: list[FileEntry]
    """Every file of the dictionary folder."""
    config: dict[str, Any]
    """The dictionary's config.json as published."""
    content_sha256: str
    """sha256 over the sorted (path, sha256) pairs: identical content, identical hash. The card
    counts by ``card_source_sha256`` (its source), not by the rendered file's sha256."""
    created_at: str
    """ISO 8601 UTC timestamp of the push."""
    card: str | None = None
    """Path of the card file among ``files``, if any."""
    card_source_sha256: str | None = None
    """Digest of the card source the card was rendered from (None: the card counts as itself)."""
