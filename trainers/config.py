"""The one training configuration: a pydantic model that is also the command line.

Every field has a docstring and unknown fields are errors. A YAML file gives the
config; ``key=value`` arguments override it (dotted paths into the sections,
values parsed as YAML), so ``python -m trainers run.yaml optim.lr=3e-4`` works.

Example:
    >>> cfg = load_config(None, ["dictionary.architecture=topk", "dictionary.k=8",
    ...                          "synthetic.n_atoms=64", "train.tokens=4096"])
    >>> cfg.dictionary.architecture, cfg.dictionary.k, cfg.optim.beta1
    ('topk', 8, 0.0)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from scope_hub.errors import ConfigError
from scope_hub.kinds import BATCHTOPK, JUMPRELU, Site, architecture, kind
from scope_hub.metadata import Architecture

_FORWARD_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_in": 2, "mlp_out": 3, "resid_post": 4}
"""Where each site is computed within a decoder layer."""
DictType = Literal["sae", "transcoder", "skip_transcoder", "clt"]


class _StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(_StrictConfig):
    """The base model activations are harvested from."""

    id: str | None = None
    """Hub id or local path (``google/gemma-3-270m``); None when training from a harvest or synthetic data."""
    revision: str | None = None
    """Model revision, recorded in the card."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype the model runs in while harvesting."""
    device: str = "cpu"
    """Device of the model and of training (``cpu``, ``cuda``, ``cuda:1``)."""


class DataConfig(_StrictConfig):
    """Text the model reads: local files or a ``datasets`` dataset (local or already cached)."""

    paths: list[str] = Field(default_factory=list)
    """Local text files (one document per file) or ``.jsonl``/``.json`` record files; globs allowed."""
    dataset: str | None = None
    """A ``datasets`` name or local folder (``load_from_disk`` output or a script/data dir); never downloads
    when ``HF_DATASETS_OFFLINE=1``."""
    dataset_config: str | None = None
    """Dataset configuration name, if it has several."""
    split: str = "train"
    """Dataset split."""
    text_field: str = "text"
    """Field holding plain text in JSONL/dataset rows."""
    messages_field: str | None = None
    """Field holding a chat (list of ``{role, content}``); rendered through the tokenizer's chat template."""
    context_size: int = Field(default=128, gt=1)
    """Tokens per model sequence."""
    prepend_bos: bool = True
    """Start every document with the tokenizer's BOS token (chat templates that already add it are left alone)."""
    packing: bool = True
    """Concatenate documents into full ``context_size`` windows; False pads each document to its own window."""
    exclude_bos: bool = True
    """Drop positions holding BOS (and padding) from harvested activations: their norms are outliers."""
    max_tokens: int | None = Field(default=None, gt=0)
    """Stop reading text after this many tokens."""
    corpus: Literal["stdlib-docstrings"] | None = None
    """A built-in corpus every machine has offline, read after ``paths``: ``stdlib-docstrings`` (the Python
    standard library's docstrings, ~112k Gemma tokens on Python 3.11; see :mod:`trainers.corpus`)."""


class HarvestConfig(_StrictConfig):
    """Which site(s) to read and how activations are stored."""

    site: Site = "resid_post"
    """Site the dictionary reads (transcoders and CLTs: ``mlp_in``)."""
    site_out: Site | None = None
    """Site a transcoder/CLT writes (default ``mlp_out`` for those types, else ``site``)."""
    layer: int | None = Field(default=None, ge=0)
    """Layer of a single-layer dictionary."""
    layers: list[int] | Literal["all"] | None = None
    """A CLT's layers (source = target layers, in order); for SAEs and transcoders, one dictionary per layer,
    all trained from one forward (``all``: every layer of the model)."""
    sites: list[Site] | None = None
    """SAEs: one dictionary per (layer, site) of ``layers`` x ``sites``, all from one forward (default [site])."""
    batch_sequences: int = Field(default=8, gt=0)
    """Sequences per model forward."""
    cache_dir: str | None = None
    """Harvest into safetensors shards here (a folder or fsspec URL such as ``s3://bucket/harvest``; resumable,
    reusable by several trainings); None streams."""
    shard_tokens: int = Field(default=262_144, gt=0)
    """Rows per shard file of a one-hookpoint harvest (a harvest of N hookpoints puts about 1/N as many rows in
    each shard, so shard size stays the same)."""
    storage_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype activations are stored in on disk."""
    stream_window: int = Field(default=16, gt=0)
    """Streaming only: model batches harvested together and shuffled before training on them."""


class SyntheticConfig(_StrictConfig):
    """Planted sparse dictionary data (tests, demos): known unit-norm atoms, known sparsity."""

    n_atoms: int = Field(default=64, gt=0)
    """Number of true atoms."""
    d_in: int = Field(default=32, gt=0)
    """Input width."""
    d_out: int | None = None
    """Output width for transcoder kinds (default d_in)."""
    n_layers: int = Field(default=1, gt=0)
    """Layers (CLT data)."""
    active_per_token: float = Field(default=3.0, gt=0)
    """Expected number of active atoms per token."""
    noise: float = Field(default=0.0, ge=0)
    """Std of isotropic Gaussian noise added to inputs."""
    seed: int = 1234
    """Seed of the atoms (the data stream is seeded by ``train.seed``)."""


class TrainedDictionaryConfig(_StrictConfig):
    """What is trained."""

    type: DictType = "sae"
    """sae, transcoder, skip_transcoder or clt (trained jointly over all layers)."""
    architecture: Architecture = "jumprelu"
    """jumprelu (Gemma Scope 2 recipe), topk, batchtopk or relu (+L1)."""
    d_sae: int = Field(default=16384, gt=0)
    """Latents (per layer for CLTs)."""
    k: int | None = Field(default=None, gt=0)
    """Active latents per token for topk/batchtopk."""
    l0_target: float | None = Field(default=32.0, gt=0)
    """JumpReLU target L0 (the quadratic penalty pulls the batch L0 toward it); Gemma Scope 2's "small",
    "medium" and "big" are about 10-20, 30-60 and 90-150."""
    matryoshka_groups: list[int] | None = None
    """Nested group sizes (sum = d_sae): the loss averages the reconstructions of every prefix."""
    affine_skip: bool = False
    """CLT only: add a learned affine skip path per layer (skip_transcoder always has one)."""
    variant: str | None = None
    """Registry key variant (``l0_small``); derived from l0_target/k when None."""


class OptimConfig(_StrictConfig):
    """Adam and the learning-rate schedule (Gemma Scope 2: beta1=0, beta2=0.999)."""

    lr: float = Field(default=7e-5, gt=0)
    """Peak learning rate."""
    beta1: float = Field(default=0.0, ge=0, lt=1)
    """Adam beta1 (0 drops the first moment entirely)."""
    beta2: float = Field(default=0.999, ge=0, lt=1)
    """Adam beta2."""
    eps: float = Field(default=1e-8, gt=0)
    """Adam epsilon."""
    warmup_steps: int = Field(default=1000, ge=0)
    """Linear lr warm-up from 0."""
    decay_fraction: float = Field(default=0.2, ge=0, le=1)
    """Final fraction of steps over which lr decays linearly to 0."""
    grad_clip: float | None = Field(default=1.0, gt=0)
    """Global gradient-norm clip; None disables."""


class LossConfig(_StrictConfig):
    """Sparsity penalties and dead-latent handling."""

    l0_coefficient: float = Field(default=1.0, ge=0)
    """JumpReLU: lambda of the quadratic L0 penalty lambda*(2/L0*)*(L0 - L0*)^2."""
    l0_penalty: Literal["per_token", "batch_mean"] = "per_token"
    """``per_token``: mean over tokens of the penalty on each token's L0 (as SAELens 6.54 implements Gemma
    Scope 2's quadratic mode); ``batch_mean``: the penalty on the batch's mean L0 (tokens may vary freely)."""
    l0_warmup_steps: int = Field(default=1000, ge=0)
    """Steps over which the sparsity coefficient ramps linearly from 0."""
    bandwidth: float = Field(default=0.001, gt=0)
    """Width of the rectangle kernel of the JumpReLU straight-through estimator (normalised units)."""
    threshold_init: float = Field(default=0.001, ge=0)
    """Initial JumpReLU threshold."""
    l1_coefficient: float = Field(default=5.0, ge=0)
    """ReLU: L1 penalty on activations weighted by decoder row norms."""
    aux_k: int | None = Field(default=None, gt=0)
    """TopK/BatchTopK: latents used by the aux-k dead-latent loss (default d_in // 2)."""
    aux_coefficient: float = Field(default=1 / 32, ge=0)
    """Weight of the aux-k loss."""
    pre_act_coefficient: float | None = Field(default=None, ge=0)
    """JumpReLU: weight of the pre-activation loss that pulls dead latents' pre-activations up to their
    thresholds (Anthropic's; SAELens ``pre_act_loss_coefficient``). None: 1.0 (it only acts on latents dead
    for ``dead_tokens``, and Adam scales their steps alike whatever the weight); 0 disables."""
    dead_tokens: int = Field(default=1_000_000, gt=0)
    """A latent is dead after not firing for this many training tokens."""
    resample_every: int | None = Field(default=None, gt=0)
    """ReLU/JumpReLU: re-initialise dead latents toward badly reconstructed inputs every N steps (JumpReLU also
    has the pre-activation loss). Refused for TopK kinds: they revive dead latents with aux-k (resampling them
    measured worse)."""
    batchtopk_threshold_decay: float = Field(default=0.99, ge=0, lt=1)
    """BatchTopK: EMA decay of the learned inference threshold (mean of the smallest kept activation)."""


class TrainLoopConfig(_StrictConfig):
    """The loop: how long, how big, seeds, checkpoints, progress."""

    tokens: int = Field(default=10_000_000, gt=0)
    """Training tokens (steps = tokens // batch_size)."""
    batch_size: int = Field(default=4096, gt=0)
    """Tokens per optimizer step (global across data-parallel ranks)."""
    seed: int = 0
    """Seed of initialisation and data order."""
    normalize: bool = True
    """Scale inputs (and targets) to unit mean norm; the factors go into the dictionary's metadata."""
    normalization_tokens: int = Field(default=65_536, gt=0)
    """Tokens used to estimate the normalisation factors."""
    decoder_unit_norm: bool = True
    """Keep decoder rows at unit norm (parallel gradient removed, rows renormalised after each step)."""
    decode: Literal["auto", "dense", "sparse"] = "auto"
    """Dense matmuls or sparse gathers of active latents; auto switches on measured density."""
    checkpoint_dir: str | None = None
    """Where checkpoints go: a local folder or an fsspec URL (``s3://bucket/run``); None disables
    checkpointing and resume."""
    checkpoint_every: int = Field(default=1000, gt=0)
    """Steps between checkpoints (one is also written on SIGTERM and at the end)."""
    keep_checkpoints: int = Field(default=2, gt=0)
    """Newest checkpoints kept."""
    resume: bool = True
    """Continue from the newest checkpoint in checkpoint_dir if there is one."""
    log_every: int = Field(default=10, gt=0)
    """Steps between progress-bar updates."""
    progress: bool | None = None
    """Show a progress bar (default: only on a terminal and not under CI)."""
    threads: int | None = Field(default=None, gt=0)
    """torch intra-op threads (default: torch's choice)."""
    latent_parallel: int = Field(default=1, gt=0)
    """Ranks that split every dictionary's latents (tensor parallelism); the job's processes form
    (processes / latent_parallel) data-parallel groups of this many. 1: plain data parallelism."""
    distribute_modules: bool = False
    """Under torchrun, split the dictionaries of a multi-target run (``harvest.layers``/``harvest.sites``) over
    the ranks, as sparsify's ``distribute_modules``: each rank trains only its own dictionaries, on the whole
    global batch (one all_to_all of activations per step; no gradient all-reduce; Adam state on one rank)."""
    final_wait_minutes: float = Field(default=120.0, gt=0)
    """How long the other ranks of a distributed run wait at its end while rank 0 evaluates and
    publishes, before failing (every other collective fails after 10 minutes)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Precision of the dictionary's GEMMs (bfloat16: autocast; weights, Adam state and loss reductions stay fp32)."""


class EvalConfig(_StrictConfig):
    """Evaluation after training (L0, FVU, dead/dense fractions, optional delta LM loss)."""

    tokens: int = Field(default=65_536, ge=0)
    """Held-out tokens for L0/FVU/dead/dense; 0 skips evaluation."""
    delta_lm_loss: bool = False
    """Also splice the dictionary into the model and measure the LM loss increase (needs a model)."""
    lm_sequences: int = Field(default=16, gt=0)
    """Sequences for the delta LM loss."""


class WandbConfig(_StrictConfig):
    """Weights & Biases run settings (``WANDB_MODE=offline`` logs without a network)."""

    project: str
    """W&B project."""
    entity: str | None = None
    """W&B team or user (default: the logged-in user's)."""
    name: str | None = None
    """Run name (default: W&B's)."""
    tags: list[str] = Field(default_factory=list)
    """Run tags."""


class OutputConfig(_StrictConfig):
    """Where the trained dictionary goes."""

    dir: str = "out/dictionary"
    """Folder or fsspec URL (``s3://bucket/run``) the dictionary (config.json + safetensors + README.md card +
    metrics.jsonl) is written to; a run of several dictionaries writes one subfolder each (``resid_post/layer_3``)."""
    registry: str | None = None
    """fsspec URL of a registry to push to (``file:///...``, ``s3://...``, ``memory://...``)."""
    key: str | None = None
    """Registry key; derived from model/site/layer/width/type/variant when None. A run of several dictionaries
    takes a template with ``{layer}`` (and ``{site}`` when there are several sites)."""
    fold_normalization: bool = True
    """Fold the normalisation factors into the weights (then the dictionary reads raw activations)."""
    license: str = "cc-by-4.0"
    """License written into the card's front matter (Gemma Scope 2 uses CC-BY-4.0)."""
    log_every: int | None = Field(default=None, gt=0)
    """Steps between plain progress lines on stderr when it is not a terminal (default ``train.log_every``;
    harvesting prints one about every 30 seconds)."""
    wandb: WandbConfig | None = None
    """Also log metrics to Weights & Biases (``pip install 'scope-hub[wandb]'``)."""


class TrainConfig(_StrictConfig):
    """Everything one training run needs; the YAML file and the CLI both fill this."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """Base model."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Text data."""
    harvest: HarvestConfig = Field(default_factory=HarvestConfig)
    """Sites and activation storage."""
    synthetic: SyntheticConfig | None = None
    """Planted-dictionary data instead of a model (tests, demos)."""
    dictionary: TrainedDictionaryConfig = Field(default_factory=TrainedDictionaryConfig)
    """The dictionary."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    """Optimizer."""
    loss: LossConfig = Field(default_factory=LossConfig)
    """Penalties."""
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    """Loop."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Output."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        d = self.dictionary
        if architecture(d.architecture).needs_k and d.k is None:
            raise ValueError(f"dictionary.k is required for architecture {d.architecture}")
        if architecture(d.architecture).needs_k and self.loss.resample_every is not None:
            # The trainer resamples only relu and jumprelu; a setting that silently does nothing misleads.
            raise ValueError(
                f"loss.resample_every applies to relu and jumprelu; {d.architecture} revives dead latents with "
                "aux-k (loss.aux_coefficient, loss.dead_tokens): unset loss.resample_every"
            )
        if architecture(d.architecture).trains_threshold and d.l0_target is None:
            raise ValueError("dictionary.l0_target is required for jumprelu (the quadratic L0 penalty's target)")
        if d.matryoshka_groups is not None and sum(d.matryoshka_groups) != d.d_sae:
            raise ValueError(f"dictionary.matryoshka_groups must sum to d_sae={d.d_sae}")
        if self.synthetic is None and self.model.id is None and not self.harvest.cache_dir:
            raise ValueError("no data: set model.id (+ data), harvest.cache_dir (an existing harvest) or synthetic")
        if self.train.latent_parallel > 1:
            self._check_latent_parallel()
        if self.train.distribute_modules:
            self._check_distribute_modules()
        if kind(d.type).per_layer_decoders and not (
            self.harvest.layers or (self.synthetic and self.synthetic.n_layers > 1)
        ):
            raise ValueError("a clt needs harvest.layers (or synthetic.n_layers > 1)")
        self._check_targets()
        if (
            not kind(d.type).reconstructs_input
            and self.synthetic is None
            and _FORWARD_ORDER[self.harvest.site] >= _FORWARD_ORDER[self.site_out]
        ):
            # reading after the output was written: the mapping would not be causal (and breaks the splice)
            raise ValueError(
                f"a {d.type} maps its input site to a later site of the same layer, but "
                f"harvest.site={self.harvest.site} comes at or after its output {self.site_out}; "
                "set harvest.site=mlp_in (the MLP's input), or choose harvest.site_out"
            )
        return self

    def _check_targets(self) -> None:
        h, name, info = self.harvest, self.dictionary.type, kind(self.dictionary.type)
        if h.sites is not None and not info.reconstructs_input:
            raise ValueError(
                f"harvest.sites lists SAE sites; a {name} maps harvest.site to harvest.site_out (per layer of "
                "harvest.layers): drop harvest.sites"
            )
        if not info.per_layer_decoders and h.layers is not None and h.layer is not None:
            raise ValueError("set harvest.layer (one dictionary) or harvest.layers (one per layer), not both")
        if not info.per_layer_decoders and h.layers is not None and self.synthetic is not None:
            raise ValueError("harvest.layers trains one dictionary per model layer: it needs model.id, not synthetic")
        if self.multi_target and self.output.key and "{layer}" not in self.output.key:
            raise ValueError("output.key names one dictionary; a run of several needs a template with {layer}")

    @property
    def multi_target(self) -> bool:
        """True when the run trains several dictionaries (``harvest.layers`` / ``harvest.sites`` on SAEs or
        transcoders)."""
        h = self.harvest
        return not kind(self.dictionary.type).per_layer_decoders and (
            h.layers is not None or (h.sites is not None and len(h.sites) > 1)
        )

    def _changes_the_math(self) -> set[tuple[str, str]]:
        """Added fields whose default changes what an older run of this config computed: kept in the
        fingerprint, so such a checkpoint is refused rather than resumed with a different loss."""
        jumprelu = self.dictionary.architecture == JUMPRELU  # unset pre_act_coefficient means 1.0 there
        return {("loss", "pre_act_coefficient")} if jumprelu else set()

    def _check_latent_parallel(self) -> None:
        d, r = self.dictionary, self.train.latent_parallel
        if d.d_sae % r:
            raise ValueError(f"dictionary.d_sae={d.d_sae} must be divisible by train.latent_parallel={r}")
        if d.architecture == BATCHTOPK:
            raise ValueError(
                "train.latent_parallel supports topk, jumprelu and relu; BatchTopK's batch-wide cut is not "
                "sharded: use dictionary.architecture=topk or train.latent_parallel=1"
            )
        if d.matryoshka_groups is not None:
            raise ValueError("train.latent_parallel does not split Matryoshka groups: set train.latent_parallel=1")
        if self.loss.resample_every is not None:
            raise ValueError("train.latent_parallel does not resample dead latents: unset loss.resample_every")
        if self.train.dtype != "float32":
            raise ValueError(
                "train.latent_parallel selects latents in float32 only (a bf16 top-k across shards keeps ties "
                "past k): set train.dtype=float32 or train.latent_parallel=1"
            )

    def _check_distribute_modules(self) -> None:
        # (a config of one dictionary is refused when the run starts: each target's own config keeps the flag)
        if self.train.latent_parallel > 1:
            raise ValueError(
                f"train.distribute_modules=true and train.latent_parallel={self.train.latent_parallel} cannot be "
                "combined (each dictionary lives on one rank): set train.latent_parallel=1, or "
                "train.distribute_modules=false to shard every dictionary's latents"
            )
        if self.output.wandb is not None:
            raise ValueError(
                "train.distribute_modules=true with output.wandb: W&B runs on rank 0, which trains only its own "
                "dictionaries; unset output.wandb (every owner writes its dictionaries' metrics.jsonl) or set "
                "train.distribute_modules=false"
            )

    @property
    def steps(self) -> int:
        """Optimizer steps of the run."""
        return max(1, self.train.tokens // self.train.batch_size)

    @property
    def site_out(self) -> str:
        """Output site: explicit, else mlp_out for transcoder kinds, else the input site."""
        if self.harvest.site_out:
            return self.harvest.site_out
        return "mlp_out" if not kind(self.dictionary.type).reconstructs_input else self.harvest.site

    @property
    def site_label(self) -> str:
        """Site name in keys and folders: ``mlp`` for an mlp_in -> mlp_out transcoder/CLT, else the input site."""
        mlp = (
            not kind(self.dictionary.type).reconstructs_input
            and self.harvest.site == "mlp_in"
            and self.site_out == "mlp_out"
        )
        return "mlp" if mlp else self.harvest.site

    def fingerprint(self) -> str:
        """sha256 of the fields that change the numbers (not paths, logging or resume flags)."""
        data = self.model_dump(mode="json")
        for section, field in _NON_NUMERIC_FIELDS:
            data.get(section, {}).pop(field, None)
        for section, field, default in _ADDED_FIELDS:  # at the default: as older checkpoints were written
            if data.get(section, {}).get(field) == default and (section, field) not in self._changes_the_math():
                data.get(section, {}).pop(field, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


_NON_NUMERIC_FIELDS = [
    ("train", "checkpoint_dir"),
    ("train", "checkpoint_every"),
    ("train", "keep_checkpoints"),
    ("train", "resume"),
    ("train", "log_every"),
    ("train", "progress"),
    ("train", "threads"),
    ("train", "final_wait_minutes"),
    ("output", "dir"),
    ("output", "registry"),
    ("output", "key"),
    ("harvest", "cache_dir"),
    ("eval", "tokens"),
    ("eval", "delta_lm_loss"),
    ("eval", "lm_sequences"),
    ("train", "decode"),
    ("output", "log_every"),
    ("output", "wandb"),
    ("train", "latent_parallel"),  # the math is the same; a resume checks the mesh itself
    ("train", "distribute_modules"),  # the same steps on the same batches; each target's checkpoint is whole
]

_ADDED_FIELDS = [
    ("data", "corpus", None),
    ("harvest", "sites", None),
    ("train", "dtype", "float32"),
    ("loss", "pre_act_coefficient", None),
]
"""Fields added after checkpoints were first written, with the value that reproduces the older behaviour;
left out of the fingerprint while they hold it."""

EXAMPLES = Path(__file__).parent / "examples"
"""Example configs shipped with the package (``sae.yaml``)."""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (values parsed as YAML) into a nested dict.

    Example:
        >>> apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=3e-4", "train.resume=false"])
        {'optim': {'lr': 0.0003}, 'train': {'resume': False}}
    """
    for item in overrides:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise ConfigError(
                f"override {item!r} is not key=value (e.g. optim.lr=3e-4, or a list: harvest.layers=[3,6,9])"
            )
        node = raw
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {path}: {part!r} is not a section (e.g. optim.lr=3e-4)")
            node = child
        node[leaf] = _parse_value(text)
    return raw


def _parse_value(text: str) -> Any:
    """YAML scalar/list parsing, plus floats YAML 1.1 leaves as strings (``3e-4``)."""
    if not text:
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start empty when ``path`` is None), apply overrides, validate.

    Errors name the offending field and where it was set, e.g. ``override optim.learning_rate: unknown
    field (did you mean optim.lr?)`` or ``run.yaml: optim.lr: Input should be greater than 0``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: must hold a YAML mapping of sections (model, data, dictionary, ...)")
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        from trainers.config_errors import describe_validation_error

        raise ConfigError(describe_validation_error(exc, TrainConfig, path, list(overrides or []))) from None


def _read_yaml(path: Path) -> Any:
    if not path.is_file():
        problem = "is a folder, not a YAML file" if path.is_dir() else "not found"
        raise ConfigError(
            f"config file '{path}' {problem}; start from {_shown(EXAMPLES / 'sae.yaml')} "
            "(see docs/training.md) or pass only KEY=VALUE overrides"
        )
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a YAML file ({' '.join(str(exc).split())})") from None


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it (``trainers/examples/sae.yaml``)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
