"""One call from a config to a published dictionary: data -> harvest -> train -> evaluate -> publish.

Data comes from (first match): ``synthetic``; an existing complete harvest in
``harvest.cache_dir``; otherwise the model: harvested into ``harvest.cache_dir``
(every rank its share of the shards, resumable) or streamed. Only rank 0
evaluates and writes output (under ``train.distribute_modules`` each rank trains, evaluates
and writes its own dictionaries: :mod:`trainers.module_parallel`).

A run of several dictionaries (``harvest.layers``/``harvest.sites``, see
:func:`trainers.harvest.target_configs`) builds one :class:`~trainers.trainer.Trainer`
per dictionary and drives them in lockstep (:func:`drive`): step ``s`` of every
dictionary reads batch ``s`` of one shared harvest, so the model runs once per
batch for all of them. Each dictionary gets its own output folder, card,
``metrics.jsonl`` and registry key, exactly as its own one-dictionary run would.

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

import dataclasses
import datetime
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scope_hub.errors import ConfigError
from scope_hub.hookpoints import Hookpoint
from scope_hub.kinds import RELU, architecture, kind
from scope_hub.metadata import Metrics
from trainers.config import TrainConfig
from trainers.distributed import DistContext
from trainers.evals import Evaluation
from trainers.harvest import (
    Harvester,
    SiteSpec,
    Target,
    harvest_to_disk,
    load_model,
    run_targets,
    site_spec,
    target_configs,
)
from trainers.harvest_shards import ShardSource, read_meta
from trainers.module_parallel import DistributedModules, StopVote
from trainers.preflight import adopt_harvest, check_harvest_folder, check_sites
from trainers.progress import METRICS_FILE, RunLog, show_progress_by_default, start_wandb
from trainers.publish import export_dictionary, save_and_publish, save_dictionary_folder, write_metrics_log
from trainers.sources import ActivationSource, SyntheticSource
from trainers.streaming import StreamingHarvest, StreamingSource, check_stream_fits
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
    targets: list[Target] = field(default_factory=list)
    """The run's dictionaries (one, unless ``harvest.layers``/``sites`` name several)."""
    sources: list[ActivationSource] = field(default_factory=list)
    """One source per target (``sources[0] is source``)."""


@dataclass
class Outcome:
    """Result of :func:`train`."""

    result: TrainResult
    dictionary: Any = None
    folder: Path | str | None = None
    push: Any = None
    name: str = ""
    """The dictionary's subfolder in a run of several (``resid_post/layer_3``)."""
    parts: list[Outcome] = field(default_factory=list)
    """A run of several dictionaries: one outcome each (this one then holds the first's result)."""

    @property
    def interrupted(self) -> bool:
        return any(p.result.interrupted for p in self.parts) or self.result.interrupted


def _synthetic(cfg: TrainConfig) -> Environment:
    s = cfg.synthetic
    planted = PlantedDictionary.for_config(cfg)
    layers = cfg.harvest.layers if isinstance(cfg.harvest.layers, list) else list(range(s.n_layers))
    source = SyntheticSource(planted, seed=cfg.train.seed, noise=s.noise)
    return Environment(source, layers, targets=[Target("", cfg, None)], sources=[source])  # type: ignore[arg-type]


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
    targets = run_targets(model, cfg)
    env = Environment(
        None,  # type: ignore[arg-type]
        targets[0].spec.layers,
        targets[0].spec,
        model,
        tok,
        data,
        {"model_revision": revision},
        targets,
    )
    return env, harvester


def _harvest_sources(cfg: TrainConfig, cache: str, meta: dict[str, Any], env: Environment | None) -> Environment:
    """Sources over a complete harvest: each target reads its own hookpoints (a harvest of several serves
    any one of its dictionaries too)."""
    by_name = {t["name"]: t for t in meta.get("targets") or []}
    targets = env.targets if env is not None else _targets_from_meta(cfg, meta)
    sources, resolved = [], []
    for target in targets:
        name = target.name or (
            f"{cfg.site_label}/layer_{cfg.harvest.layer}"
            if by_name and not kind(cfg.dictionary.type).per_layer_decoders
            else ""
        )
        hps = by_name.get(name) if by_name else None
        if by_name and hps is None:
            raise ConfigError(
                f"{cache} holds {', '.join(by_name)}, not {name}; set harvest.layer/harvest.site to one of them "
                "or give this run its own harvest.cache_dir"
            )
        ins, outs = (hps["hookpoints_in"], hps["hookpoints_out"]) if hps else (None, None)
        sources.append(ShardSource(cache, cfg.train.seed, cfg.eval.tokens, ins, outs))
        if hps and target.spec is None:  # its own layers and hookpoints: what its key and card record
            spec = SiteSpec(
                list(hps["layers"]),
                [Hookpoint.parse(h) for h in ins],
                [Hookpoint.parse(h) for h in outs] if outs else None,
                None,
            )
            target = dataclasses.replace(target, spec=spec)
        resolved.append(target)
    targets = resolved
    if env is None:
        env = Environment(sources[0], meta["layers"], targets=targets)
    env.targets = targets
    env.source, env.sources = sources[0], sources
    return env


def _targets_from_meta(cfg: TrainConfig, meta: dict[str, Any]) -> list[Target]:
    if not cfg.multi_target:
        return [Target("", cfg, None)]  # type: ignore[arg-type]
    return [Target(name, sub, None) for name, sub in target_configs(cfg, meta.get("model_layers") or 0)]  # type: ignore[arg-type]


def build_environment(cfg: TrainConfig, ctx: DistContext, need_model: bool = False) -> Environment:
    """The activation source of a run (harvesting first when configured)."""
    if cfg.synthetic is not None:
        return _synthetic(cfg)
    cache = cfg.harvest.cache_dir
    meta = read_meta(cache) if cache else None
    harvested = adopt_harvest(cfg, meta) if meta else None  # checks the labels; fills unset fields
    if meta and meta.get("complete") and not need_model:
        env = _harvest_sources(cfg, cache, meta, None)
        env.spec = harvested
        return env
    check_harvest_folder(cfg)
    env, harvester = _model_env(cfg)
    if cache:
        harvest_to_disk(
            harvester,
            env.data,
            cfg,
            cache,
            progress=cfg.train.progress,
            ctx=ctx,
            revision=env.extra["model_revision"],
            targets=env.targets,
        )
        return _harvest_sources(cfg, cache, read_meta(cache), env)
    chunk = cfg.train.batch_size * cfg.harvest.stream_window
    setup_rows = min(cfg.train.normalization_tokens, cfg.steps * cfg.train.batch_size) if cfg.train.normalize else 1
    shared = StreamingHarvest(
        harvester,
        env.data,
        seed=cfg.train.seed,
        chunk=chunk,
        batch_sequences=cfg.harvest.batch_sequences,
        keep_chunks=-(-setup_rows // chunk),
        ctx=ctx,
    )
    env.sources = [
        StreamingSource(
            harvester,
            env.data,
            seed=cfg.train.seed,
            batch_size=cfg.train.batch_size,
            window=cfg.harvest.stream_window,
            eval_tokens=cfg.eval.tokens,
            spec=target.spec,
            shared=shared,
        )
        for target in env.targets
    ]
    env.source = env.sources[0]
    check_stream_fits(cfg, env.source.n_train, env.source.n_eval)
    return env


def run_evaluation(
    dictionary: Any, cfg: TrainConfig, env: Environment, source: ActivationSource | None = None
) -> Metrics:
    """L0/FVU/dead/dense on held-out rows, plus delta LM loss when configured and a model is at hand."""
    return evaluate_together([dictionary], [cfg], env, [source or env.source])[0]


def evaluate_together(
    dictionaries: list[Any], cfgs: list[TrainConfig], env: Environment, sources: list[ActivationSource]
) -> list[Metrics]:
    """:func:`run_evaluation` of several dictionaries, reading each held-out batch once for all of them."""
    cfg = cfgs[0]
    evaluations = [Evaluation(d) for d in dictionaries]
    for batches in zip(*[s.eval_batches(cfg.eval.tokens, cfg.train.batch_size) for s in sources]):
        for evaluation, (x, t) in zip(evaluations, batches):
            evaluation.add(x, t)
    metrics = [e.metrics() for e in evaluations]
    if cfg.eval.delta_lm_loss:
        if env.model is None:
            raise ConfigError("eval.delta_lm_loss needs the model: set model.id (the harvest alone is not enough)")
        from trainers.lm_eval import delta_lm_loss

        n = cfg.eval.lm_sequences
        ids, mask = env.data.input_ids[-n:], env.data.attention_mask[-n:]
        for dictionary, m in zip(dictionaries, metrics):
            delta, with_error = delta_lm_loss(
                env.model,
                dictionary,
                ids,
                mask,
                env.tokenizer.bos_token_id,
                cfg.data.exclude_bos,
                cfg.harvest.batch_sequences,
            )
            m.delta_lm_loss, m.delta_lm_loss_error_term = delta, with_error
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
    if architecture(cfg.dictionary.architecture).trains_threshold and cfg.loss.l0_warmup_steps >= cfg.steps:
        found.append(
            f"loss.l0_warmup_steps={cfg.loss.l0_warmup_steps} is longer than the run ({cfg.steps} steps): "
            "the L0 penalty never reaches full strength, so L0 stays above dictionary.l0_target; "
            f"set loss.l0_warmup_steps={max(1, cfg.steps // 10)} (10% of the run)"
        )
    revives = cfg.dictionary.architecture != RELU or cfg.loss.resample_every
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
    A run of several dictionaries returns one outcome per dictionary in ``parts``.
    """
    if ctx is None:
        final_wait = datetime.timedelta(minutes=cfg.train.final_wait_minutes)
        with DistContext.from_env(cfg.model.device, final_wait) as joined:
            return train(cfg, joined)
    env = build_environment(cfg, ctx, need_model=cfg.eval.delta_lm_loss)
    if ctx.is_main:  # after the data checks: a config error comes alone, without warnings before it
        for warning in short_run_warnings(cfg):
            sys.stderr.write(f"warning: {warning}\n")
    modules = DistributedModules(cfg, env.targets, env.sources, ctx) if cfg.train.distribute_modules else None
    if modules is not None:  # this rank trains its own targets, each as one process on whole batches
        env.targets, env.sources, trainers = modules.build()
    else:
        trainers = [Trainer(t.cfg, source, ctx) for t, source in zip(env.targets, env.sources)]
    writes = ctx.is_main or modules is not None  # an owner writes its own targets' outputs
    logs = _run_logs(cfg, env.targets, ctx, writes)
    wandb_run = start_wandb(cfg, [t.name for t in env.targets]) if ctx.is_main else None
    for log in logs:
        log.wandb_run = wandb_run
    try:
        results = drive(trainers, logs, modules.vote if modules is not None else None)
    finally:
        for log in logs:
            log.close()
        if wandb_run is not None:
            wandb_run.finish()
    outcomes = [Outcome(r, name=t.name) for r, t in zip(results, env.targets)]
    for source in env.sources:  # the writer evaluates alone: it harvests held-out rows without the other ranks
        if isinstance(source, StreamingSource):
            source.stream.ctx = DistContext()
    if any(r.interrupted for r in results) or not writes:
        ctx.final_wait()
        return _combined(cfg, outcomes)
    data = {**env.source.describe(), **env.extra}
    dictionaries = [
        export_dictionary(r, t.cfg, {**data, **s.describe()}, t.spec or (env.spec if len(env.targets) == 1 else None))
        for r, t, s in zip(results, env.targets, env.sources)
    ]
    if cfg.eval.tokens:
        metrics = evaluate_together(dictionaries, [t.cfg for t in env.targets], env, env.sources)
        for dictionary, m in zip(dictionaries, metrics):
            dictionary.config.metrics = m
    for _ in modules.one_rank_at_a_time() if modules is not None else [None]:  # one registry writer at a time
        for outcome, dictionary, target, log in zip(outcomes, dictionaries, env.targets, logs):
            outcome.dictionary = dictionary
            outcome.folder, outcome.push = save_and_publish(
                dictionary, target.cfg, target.spec.layers if target.spec else env.layers
            )
            write_metrics_log(target.cfg.output.dir, log.text())
    ctx.final_wait()
    return _combined(cfg, outcomes)


def _combined(cfg: TrainConfig, outcomes: list[Outcome]) -> Outcome:
    if len(outcomes) == 1:
        return outcomes[0]
    first = outcomes[0]
    return Outcome(first.result, folder=cfg.output.dir, parts=outcomes)


def _run_logs(cfg: TrainConfig, targets: list[Target], ctx: DistContext, writes: bool) -> list[RunLog]:
    """The writing rank logs its dictionaries (rank 0 all of them, or each owner its own under module
    distribution); plain lines unless a bar shows (or ``train.progress=false``); bars only on rank 0."""
    lines = writes and cfg.train.progress is None and not show_progress_by_default()
    bars = ctx.is_main and len(targets) > 1 and (cfg.train.progress or (cfg.train.progress is None and not lines))
    return [
        RunLog(
            t.name,
            t.cfg.output.dir,
            t.cfg.steps,
            batch_tokens=cfg.train.batch_size,
            log_every=cfg.output.log_every or cfg.train.log_every,
            lines=lines,
            bar=bool(bars),
            position=i if bars else None,
            write=writes,
        )
        for i, t in enumerate(targets)
    ]


def drive(trainers: list[Trainer], logs: list[RunLog], vote: StopVote | None = None) -> list[TrainResult]:
    """Step every trainer in turn until all finish; one stopping early (SIGTERM) stops the others after
    their next step, each with its checkpoint. Under module distribution ``vote`` makes every rank stop
    in the same round (each step's exchange needs all of them)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    steps = [t.iterate() for t in trainers]
    live = list(range(len(trainers)))
    try:
        while live:
            if vote is not None:
                vote.new_round()
            for i in list(live):
                if next(steps[i], None) is None:
                    live.remove(i)
                logs[i].observe(trainers[i].history)
            if any(t.step < t.steps for i, t in enumerate(trainers) if i not in live):  # stopped early
                for i in live:
                    trainers[i].request_stop()
    finally:
        for step in steps:
            step.close()
        if main:
            signal.signal(signal.SIGTERM, previous)  # each trainer installed (and restored) its own handler
    return [t.result() for t in trainers]


def evaluate_folder(folder: str | Path, cfg: TrainConfig) -> Metrics:
    """Evaluate a saved dictionary on ``cfg``'s data and write the metrics into its ``config.json``."""
    from scope_hub.dictionaries import Dictionary

    dictionary = Dictionary.from_pretrained(folder)
    env = build_environment(cfg, DistContext(), need_model=cfg.eval.delta_lm_loss)
    metrics = run_evaluation(dictionary, cfg, env)
    dictionary.config.metrics = metrics
    folder = Path(folder)
    readme, log = folder / "README.md", folder / METRICS_FILE
    kept_log = log.read_text() if log.is_file() else ""  # the folder is rewritten whole: keep the run's log
    save_dictionary_folder(dictionary, folder, readme.read_text() if readme.is_file() else None)
    write_metrics_log(str(folder), kept_log)
    return metrics


def harvest_only(cfg: TrainConfig, ctx: DistContext | None = None) -> str | Path:
    """Harvest into ``harvest.cache_dir`` and stop (to share one harvest between several trainings);
    under torchrun every rank harvests its share."""
    if not cfg.harvest.cache_dir:
        raise ConfigError("--harvest-only needs harvest.cache_dir=DIR (where the shards go)")
    if ctx is None:
        with DistContext.from_env(cfg.model.device) as joined:
            return harvest_only(cfg, joined)
    env, harvester = _model_env(cfg)
    return harvest_to_disk(
        harvester,
        env.data,
        cfg,
        cfg.harvest.cache_dir,
        progress=cfg.train.progress,
        ctx=ctx,
        revision=env.extra["model_revision"],
        targets=env.targets,
    )
