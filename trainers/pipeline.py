"""One call from a config to a published dictionary: data -> harvest -> train -> evaluate -> publish.

Data comes from (first match): ``synthetic``; an existing complete harvest in
``harvest.cache_dir``; otherwise the model: harvested into ``harvest.cache_dir``
(rank 0, resumable) or streamed. Only rank 0 evaluates and writes output.

Example:
    >>> import tempfile
    >>> from trainers.config import load_config
    >>> out = tempfile.mkdtemp() + "/sae"
    >>> cfg = load_config(None, ["synthetic.d_in=16", "synthetic.n_atoms=32", "dictionary.d_sae=32",
    ...     "dictionary.architecture=topk", "dictionary.k=3", "train.tokens=8192", "train.batch_size=512",
    ...     "optim.lr=1e-2", "eval.tokens=2048", f"output.dir={out}"])
    >>> outcome = train(cfg)
    >>> outcome.folder.name, outcome.dictionary.config.metrics.eval_tokens
    ('sae', 2048)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scope_hub.errors import ConfigError
from scope_hub.metadata import Metrics
from trainers.config import TrainConfig
from trainers.distributed import DistContext
from trainers.evals import evaluate
from trainers.harvest import Harvester, SiteSpec, StreamingSource, harvest_to_disk, load_model, site_spec
from trainers.preflight import adopt_harvest, check_harvest_folder, check_sites
from trainers.publish import export_dictionary, save_and_publish
from trainers.shards import ShardSource, read_meta
from trainers.sources import ActivationSource, SyntheticSource
from trainers.synthetic import PlantedDictionary
from trainers.trainer import Trainer, TrainResult


@dataclass
class Environment:
    """What building the data source produced (the model is kept for the delta-LM-loss eval)."""

    source: ActivationSource
    layers: list[int]
    spec: SiteSpec | None = None
    model: Any = None
    tokenizer: Any = None
    data: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """Result of :func:`train`."""

    result: TrainResult
    dictionary: Any = None
    folder: Path | None = None
    push: Any = None

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted


def _synthetic(cfg: TrainConfig) -> Environment:
    s = cfg.synthetic
    planted = PlantedDictionary.create(
        n_atoms=s.n_atoms,
        d_in=s.d_in,
        d_out=s.d_out,
        n_layers=s.n_layers,
        active_per_token=s.active_per_token,
        kind=cfg.dictionary.type,
        seed=s.seed,
    )
    layers = cfg.harvest.layers or list(range(s.n_layers))
    return Environment(SyntheticSource(planted, seed=cfg.train.seed, noise=s.noise), layers)


def _model_env(cfg: TrainConfig) -> tuple[Environment, Harvester]:
    from trainers.data import require_data, token_sequences

    require_data(cfg.data)  # before the (slow) model load, as are the sites and layers
    check_sites(cfg)
    model, tok = load_model(cfg)
    data = token_sequences(cfg.data, tok)
    spec = site_spec(model, cfg)
    harvester = Harvester(model, spec, tok.bos_token_id, cfg.data.exclude_bos)
    # The commit of a Hub download (transformers records it), so the card can pin the base model.
    revision = cfg.model.revision or getattr(model.config, "_commit_hash", None)
    env = Environment(None, spec.layers, spec, model, tok, data, {"model_revision": revision})  # type: ignore[arg-type]
    return env, harvester


def build_environment(cfg: TrainConfig, ctx: DistContext, need_model: bool = False) -> Environment:
    """The activation source of a run (harvesting first when configured)."""
    if cfg.synthetic is not None:
        return _synthetic(cfg)
    cache = cfg.harvest.cache_dir
    meta = read_meta(cache) if cache else None
    harvested = adopt_harvest(cfg, meta) if meta else None
    if meta and meta.get("complete") and not need_model:
        return Environment(ShardSource(cache, cfg.train.seed, cfg.eval.tokens), meta["layers"], harvested)
    check_harvest_folder(cfg)
    env, harvester = _model_env(cfg)
    if cache:
        if ctx.is_main:
            harvest_to_disk(harvester, env.data, cfg, cache, progress=cfg.train.progress)
        ctx.barrier()
        env.source = ShardSource(cache, cfg.train.seed, cfg.eval.tokens)
    else:
        env.source = StreamingSource(
            harvester,
            env.data,
            seed=cfg.train.seed,
            batch_size=cfg.train.batch_size,
            window=cfg.harvest.stream_window,
            batch_sequences=cfg.harvest.batch_sequences,
            eval_tokens=cfg.eval.tokens,
        )
        check_stream_fits(cfg, env.source.n_train, env.source.n_eval)
    return env


def stream_tokens(tokens: int, batch_size: int, window: int) -> int:
    """Training tokens a streamed run reads: whole chunks of ``window`` batches covering its steps.

    Example:
        >>> stream_tokens(10_000, batch_size=4096, window=16)  # 2 steps, but one chunk is 16 x 4096
        65536
    """
    steps = max(1, tokens // batch_size)
    return -(-steps // window) * window * batch_size


def stream_fixes(tokens: int, batch_size: int, window: int, available: int) -> list[str]:
    """Overrides that make a streamed run fit in ``available`` training tokens (each alone, else combined).

    Example:
        >>> stream_fixes(10_000, batch_size=4096, window=16, available=20_000)
        ['harvest.stream_window=4', 'train.batch_size=1024']
    """
    fixes = []
    window_fit = next((w for w in range(window - 1, 0, -1) if stream_tokens(tokens, batch_size, w) <= available), None)
    if window_fit:
        fixes.append(f"harvest.stream_window={window_fit}")
    halvings = [batch_size >> i for i in range(1, batch_size.bit_length())]
    batch_fit = next((b for b in halvings if stream_tokens(tokens, b, window) <= available), None)
    if batch_fit:
        fixes.append(f"train.batch_size={batch_fit}")
    chunks = available // (window * batch_size)
    if chunks:
        fixes.append(f"train.tokens={chunks * window * batch_size}")
    if not fixes:  # one chunk of one batch per step: at most `available` tokens
        batch = next((b for b in [batch_size, *halvings] if b <= available), None)
        if batch:
            smaller = f" train.batch_size={batch}" if batch != batch_size else ""
            fixes.append(f"train.tokens={available // batch * batch}{smaller} harvest.stream_window=1")
    return fixes


def check_stream_fits(cfg: TrainConfig, n_train: int, n_eval: int) -> None:
    """Raise :class:`ConfigError` (with overrides that would fit) when streaming would run out of data."""
    tokens, batch, window = cfg.train.tokens, cfg.train.batch_size, cfg.harvest.stream_window
    needed = stream_tokens(tokens, batch, window)
    if needed <= n_train:
        return
    fixes = stream_fixes(tokens, batch, window, n_train)
    raise ConfigError(
        f"streaming needs {needed} training tokens but the data holds {n_train} (plus {n_eval} held out for "
        f"eval.tokens): train.tokens={tokens} is {cfg.steps} step(s) of train.batch_size={batch}, harvested in whole "
        f"chunks of harvest.stream_window={window} batches ({window * batch} tokens); "
        + (f"set {' or '.join(fixes)}, " if fixes else "")
        + "or harvest to disk (harvest.cache_dir=DIR, which allows several epochs), or add data"
    )


def run_evaluation(dictionary: Any, cfg: TrainConfig, env: Environment) -> Metrics:
    """L0/FVU/dead/dense on held-out rows, plus delta LM loss when configured and a model is at hand."""
    metrics = evaluate(dictionary, env.source.eval_batches(cfg.eval.tokens, cfg.train.batch_size))
    if cfg.eval.delta_lm_loss:
        if env.model is None:
            raise ConfigError("eval.delta_lm_loss needs the model: set model.id (the harvest alone is not enough)")
        from trainers.lm_eval import delta_lm_loss

        n = cfg.eval.lm_sequences
        ids, mask = env.data.input_ids[-n:], env.data.attention_mask[-n:]
        delta, with_error = delta_lm_loss(
            env.model,
            dictionary,
            ids,
            mask,
            env.tokenizer.bos_token_id,
            cfg.data.exclude_bos,
            cfg.harvest.batch_sequences,
        )
        metrics.delta_lm_loss, metrics.delta_lm_loss_error_term = delta, with_error
    return metrics


def short_run_warnings(cfg: TrainConfig) -> list[str]:
    """Schedules longer than the run: settings that silently keep a target from being reached.

    Example:
        >>> from trainers.config import load_config
        >>> cfg = load_config(None, ["synthetic.d_in=8", "dictionary.l0_target=4", "train.tokens=8192"])
        >>> short_run_warnings(cfg)[0][:60]
        'loss.l0_warmup_steps=1000 is longer than the run (2 steps): '
    """
    found = []
    if cfg.dictionary.architecture == "jumprelu" and cfg.loss.l0_warmup_steps >= cfg.steps:
        found.append(
            f"loss.l0_warmup_steps={cfg.loss.l0_warmup_steps} is longer than the run ({cfg.steps} steps): "
            "the L0 penalty never reaches full strength, so L0 stays above dictionary.l0_target; "
            f"set loss.l0_warmup_steps={max(1, cfg.steps // 10)} (10% of the run)"
        )
    revives = cfg.dictionary.architecture != "relu" or cfg.loss.resample_every
    if revives and cfg.loss.dead_tokens >= cfg.train.tokens:
        found.append(
            f"loss.dead_tokens={cfg.loss.dead_tokens} is not shorter than the run (train.tokens={cfg.train.tokens}): "
            "no latent can count as dead, so dead-latent revival (aux-k, pre-activation loss, resampling) never acts; "
            f"set loss.dead_tokens={max(cfg.train.batch_size, cfg.train.tokens // 10)} (10% of the run)"
        )
    if cfg.optim.warmup_steps >= cfg.steps:
        found.append(
            f"optim.warmup_steps={cfg.optim.warmup_steps} is longer than the run ({cfg.steps} steps): "
            f"the learning rate never reaches optim.lr; set optim.warmup_steps={max(1, cfg.steps // 20)}"
        )
    return found


def train(cfg: TrainConfig, ctx: DistContext | None = None) -> Outcome:
    """Run the whole pipeline; an interrupted (SIGTERM) run returns after its checkpoint, unexported.

    Without ``ctx`` this joins the torchrun job (if any) and leaves its process group on the way out.
    """
    if ctx is None:
        with DistContext.from_env(cfg.model.device) as joined:
            return train(cfg, joined)
    env = build_environment(cfg, ctx, need_model=cfg.eval.delta_lm_loss)
    if ctx.is_main:  # after the data checks: a config error comes alone, without warnings before it
        for warning in short_run_warnings(cfg):
            sys.stderr.write(f"warning: {warning}\n")
    result = Trainer(cfg, env.source, ctx).run()
    outcome = Outcome(result)
    if result.interrupted or not ctx.is_main:
        ctx.barrier()
        return outcome
    dictionary = export_dictionary(result, cfg, {**env.source.describe(), **env.extra}, env.spec)
    if cfg.eval.tokens:
        dictionary.config.metrics = run_evaluation(dictionary, cfg, env)
    outcome.dictionary = dictionary
    outcome.folder, outcome.push = save_and_publish(dictionary, cfg, env.layers)
    ctx.barrier()
    return outcome


def evaluate_folder(folder: str | Path, cfg: TrainConfig) -> Metrics:
    """Evaluate a saved dictionary on ``cfg``'s data and write the metrics into its ``config.json``."""
    from scope_hub.dictionaries import Dictionary

    dictionary = Dictionary.from_pretrained(folder)
    env = build_environment(cfg, DistContext(), need_model=cfg.eval.delta_lm_loss)
    metrics = run_evaluation(dictionary, cfg, env)
    dictionary.config.metrics = metrics
    readme = Path(folder) / "README.md"
    dictionary.save_pretrained(folder, card=readme.read_text() if readme.is_file() else None)
    return metrics


def harvest_only(cfg: TrainConfig) -> Path:
    """Harvest into ``harvest.cache_dir`` and stop (to share one harvest between several trainings)."""
    if not cfg.harvest.cache_dir:
        raise ConfigError("--harvest-only needs harvest.cache_dir=DIR (where the shards go)")
    env, harvester = _model_env(cfg)
    return harvest_to_disk(harvester, env.data, cfg, cfg.harvest.cache_dir, progress=cfg.train.progress)
