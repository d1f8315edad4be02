"""The training loop: steps, constraints, dead-latent bookkeeping, checkpoints, SIGTERM.

One :class:`Trainer` trains one dictionary on one :class:`~trainers.sources.ActivationSource`,
data-parallel over the job's ranks and, with ``train.latent_parallel`` = R, with every
dictionary's latents split over groups of R ranks (:mod:`trainers.latent_parallel`; each
group reads one data slice). Checkpoints then hold one tensor file per latent shard and
resume on the same mesh; the finished dictionary is gathered whole onto rank 0.
Everything a step depends on (parameters, Adam state, dead-latent counters,
BatchTopK threshold, decode-path choice, the RNG) is saved in checkpoints, and
batches are pure functions of (seed, step), so a run killed at any point and
resumed reaches the same weights as an uninterrupted one.

Example:
    >>> from trainers.config import load_config
    >>> from trainers.sources import SyntheticSource
    >>> from trainers.synthetic import PlantedDictionary
    >>> cfg = load_config(None, ["synthetic.d_in=8", "dictionary.d_sae=16", "dictionary.architecture=topk",
    ...     "dictionary.k=2", "train.tokens=2048", "train.batch_size=256", "optim.lr=1e-2", "optim.warmup_steps=0"])
    >>> result = Trainer(cfg, SyntheticSource(PlantedDictionary.create(n_atoms=16, d_in=8, active_per_token=2))).run()
    >>> result.steps, result.history[-1]["fvu"] < 0.6
    (8, True)
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scope_hub.dictionaries import Dictionary
from scope_hub.errors import ConfigError
from scope_hub.kinds import JUMPRELU, RELU, architecture, kind
from trainers.checkpoint import (
    Checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_shard,
)
from trainers.config import TrainConfig
from trainers.distributed import DistContext
from trainers.forward import SparsitySpec, Workspace, forward, layer_params
from trainers.latent_parallel import (
    clip_sharded_gradients,
    forward_sharded,
    is_sharded,
    latent_dim,
    sharded_aux_k_loss,
)
from trainers.losses import (
    PRE_ACT_COEFFICIENT,
    aux_k_loss,
    fvu,
    l0_penalty,
    l1_penalty,
    pre_act_loss,
    reconstruction_loss,
)
from trainers.normalization import estimate_scales
from trainers.optim import clip_gradients, lr_at, make_optimizer, set_lr, warmup
from trainers.params import (
    apply_constraints,
    build_dictionary,
    init_dictionary,
    input_output_covariance,
    remove_parallel_grads,
    trainable_parameters,
)
from trainers.progress import Progress
from trainers.resample import resample_dead
from trainers.sources import ActivationSource

AUTO_SPARSE_DENSITY = 0.05
"""``decode: auto`` uses the sparse path for a layer once its active fraction is below this."""


@dataclass
class TrainResult:
    """What a finished (or interrupted) run leaves: the dictionary in normalised units and its factors."""

    dictionary: Dictionary
    scale_in: list[float]
    scale_out: list[float]
    steps: int
    interrupted: bool
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains ``cfg.dictionary`` on ``source``; data- and latent-parallel when ``ctx`` spans several ranks."""

    def __init__(self, cfg: TrainConfig, source: ActivationSource, ctx: DistContext | None = None) -> None:
        self.cfg, self.source = cfg, source
        self.ctx, self.latents = (ctx or DistContext()).mesh(cfg.train.latent_parallel)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.steps = cfg.steps
        self.ws = Workspace()
        self.history: list[dict[str, float]] = []
        self._stop = False
        self._setup()

    # -- setup ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        cfg, src = self.cfg, self.source
        torch.manual_seed(cfg.train.seed)
        shared = not cfg.output.fold_normalization
        if cfg.train.normalize:
            self.scale_in, self.scale_out = estimate_scales(
                src, cfg.train.normalization_tokens, cfg.train.batch_size, shared, self.steps
            )
        else:
            self.scale_in, self.scale_out = [1.0] * src.n_layers, [1.0] * src.n_layers
        n_layers, d_sae = src.n_layers, cfg.dictionary.d_sae
        shard = self.latents.range(d_sae) if self.latents else None
        self.dictionary = build_dictionary(
            cfg, d_in=src.d_in, d_out=src.d_out, n_layers=n_layers, device=self.ctx.device, latents=shard
        )
        x, t = self._normalized(*src.batch(0, cfg.train.batch_size))
        gen = torch.Generator().manual_seed(cfg.train.seed)
        covariance = None if kind(cfg.dictionary.type).reconstructs_input else input_output_covariance(x, t)
        init_dictionary(
            self.dictionary, cfg, gen, b_dec=t.mean(0), latents=shard, x_mean=x.mean(0), covariance=covariance
        )
        self.params = layer_params(self.dictionary)
        self.named = trainable_parameters(self.dictionary)
        self.optimizer = make_optimizer(self.named, cfg.optim)
        self.tokens_since_fired = torch.zeros(n_layers, self.dictionary.config.d_sae, dtype=torch.int64)
        self.step, self.tokens_seen, self.threshold_ready = 0, 0, False
        arch, k = cfg.dictionary.architecture, cfg.dictionary.k
        self.density = [(k / d_sae) if k else 0.5] * n_layers
        self.spec = SparsitySpec(
            arch,
            k=k,
            bandwidth=cfg.loss.bandwidth,
            batch_keep=(k or 0) * cfg.train.batch_size,
            global_pool=self.ctx.gather_cat if self.ctx.world > 1 else None,
            any_rank=self.ctx.any if self.ctx.world > 1 else None,
        )
        if cfg.train.checkpoint_dir and cfg.train.resume:
            self._maybe_resume(cfg.train.checkpoint_dir)

    def _normalized(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.ctx.device
        s_in = torch.tensor(self.scale_in, dtype=torch.float32, device=dev).view(1, -1, 1)
        xn = x.to(device=dev, dtype=torch.float32) * s_in
        if t is x:
            return xn, xn
        s_out = torch.tensor(self.scale_out, dtype=torch.float32, device=dev).view(1, -1, 1)
        return xn, t.to(device=dev, dtype=torch.float32) * s_out

    # -- checkpoints ------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything tensor-valued a resume needs."""
        tensors = {f"param/{n}": p.detach() for n, p in self.dictionary.named_parameters()}
        tensors.update(optimizer_tensors(self.optimizer, [n for n, _ in self.named]))
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["state/tokens_since_fired"] = self.tokens_since_fired
        return tensors

    def state_json(self) -> dict[str, Any]:
        """Everything scalar a resume needs, plus the config for audit."""
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "scale_in": self.scale_in,
            "scale_out": self.scale_out,
            "density": self.density,
            "threshold_ready": self.threshold_ready,
            "world": self.ctx.world,
            "latent_parallel": self.latents.size if self.latents else 1,
            "fingerprint": self.cfg.fingerprint(),
            "config": self.cfg.model_dump(mode="json"),
            "dictionary_config": self.dictionary.config.model_dump(mode="json"),
        }

    def save(self) -> Path | str | None:
        """Write a checkpoint of the current state; every rank waits until it is committed.

        The first data-parallel replica writes one tensor file per latent shard (the other
        replicas hold the same values); once all are in, rank 0 writes the commit marker.
        """
        path, root = None, self.cfg.train.checkpoint_dir
        if root and self.ctx.rank == 0:
            shard, shards = (self.latents.rank, self.latents.size) if self.latents else (0, 1)
            digest = save_shard(root, self.step, self.state_tensors(), shard, shards)
            if self.latents:  # every shard's sha256, which also means every shard is written
                raw = torch.frombuffer(bytearray.fromhex(digest), dtype=torch.uint8).to(self.ctx.device)
                hashes = [bytes(h.cpu().tolist()).hex() for h in self.latents.cat(raw.view(1, -1), 0)]
            else:
                hashes = [digest]
            if self.ctx.is_main:
                path = commit_checkpoint(root, self.step, self.state_json(), hashes, self.cfg.train.keep_checkpoints)
        self.ctx.barrier()
        return path

    def _maybe_resume(self, root: str) -> None:
        ckpt = latest_checkpoint(root, self.latents.rank if self.latents else 0)
        if ckpt is not None:
            self.load_state(ckpt)

    def load_state(self, ckpt: Checkpoint) -> None:
        """Continue from ``ckpt`` (written by a run of the same configuration)."""
        if ckpt.state["fingerprint"] != self.cfg.fingerprint():
            raise ConfigError(
                f"{ckpt.path} was written by a different configuration; give this run its own "
                "train.checkpoint_dir (each training on a shared harvest needs one) or set "
                "train.resume=false to start over there"
            )
        mesh = (ckpt.state.get("world", 1), ckpt.state.get("latent_parallel", 1))
        here = (self.ctx.world, self.latents.size if self.latents else 1)
        if mesh != here and (mesh[1] > 1 or here[1] > 1):
            raise ConfigError(
                f"{ckpt.path} holds latent shards of a {mesh[0]} (data) x {mesh[1]} (latent) mesh, but this run "
                f"is {here[0]} x {here[1]}: resume with the same process count and train.latent_parallel"
            )
        with torch.no_grad():
            for name, param in self.dictionary.named_parameters():
                param.copy_(ckpt.tensors[f"param/{name}"])
        restore_optimizer(self.optimizer, [n for n, _ in self.named], ckpt.tensors)
        torch.set_rng_state(ckpt.tensors["rng/torch"])
        self.tokens_since_fired = ckpt.tensors["state/tokens_since_fired"].clone()
        state = ckpt.state
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.scale_in, self.scale_out = state["scale_in"], state["scale_out"]
        self.density, self.threshold_ready = state["density"], state["threshold_ready"]

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train until ``cfg.steps`` (or SIGTERM: then checkpoint and return ``interrupted=True``)."""
        for _ in self.iterate():
            pass
        return self.result()

    def iterate(self) -> Iterator[int]:
        """:meth:`run` one step per ``next()`` (yields the step reached): a pipeline drives the trainers of
        several dictionaries in lockstep this way, so each batch is harvested once for all of them."""
        cfg = self.cfg
        progress = Progress(
            self.steps, self.step, cfg.train.progress if self.ctx.is_main else False, cfg.train.batch_size
        )
        previous = self._install_sigterm()
        try:
            tick, tick_tokens = time.perf_counter(), 0
            while self.step < self.steps:
                stats = self.advance()
                tick_tokens += cfg.train.batch_size
                if self.step % cfg.train.log_every == 0 or self.step == self.steps:
                    now = time.perf_counter()
                    stats["tok_s"] = tick_tokens / max(now - tick, 1e-9)
                    tick, tick_tokens = now, 0
                    stats["step"] = self.step
                    self.history.append(stats)
                    progress.update(self.step, stats)
                stop = self.ctx.any(self._stop)
                if stop or self.step % cfg.train.checkpoint_every == 0 or self.step == self.steps:
                    self.save()
                if stop:
                    break
                yield self.step
        finally:
            progress.close()
            self._restore_sigterm(previous)

    def result(self) -> TrainResult:
        """The run's outcome so far (``interrupted`` while short of ``cfg.steps``)."""
        return TrainResult(
            self.whole_dictionary(), self.scale_in, self.scale_out, self.step, self.step < self.steps, self.history
        )

    def request_stop(self) -> None:
        """Finish the current step, checkpoint and stop, as on SIGTERM."""
        self._stop = True

    @torch.no_grad()
    def whole_dictionary(self) -> Dictionary:
        """The trained dictionary; latent shards are gathered onto rank 0 (other ranks get their shard)."""
        if self.latents is None or self.ctx.rank != 0:
            return self.dictionary
        src = self.source
        whole = None
        if self.ctx.is_main:
            whole = build_dictionary(
                self.cfg, d_in=src.d_in, d_out=src.d_out, n_layers=src.n_layers, device=self.ctx.device
            )
        for name, param in self.dictionary.named_parameters():
            value = self.latents.gather_to_first(param, latent_dim(name, param)) if is_sharded(name) else param
            if whole is not None:
                whole.get_parameter(name).copy_(value)
        return whole if whole is not None else self.dictionary

    def advance(self) -> dict[str, float]:
        """One optimizer step on global batch ``self.step`` (this rank's slice); logged stats when due."""
        x, t = self._normalized(*self.source.batch(self.step, self.cfg.train.batch_size, self.ctx.rank, self.ctx.world))
        stats = self._train_step(x, t)
        self.step += 1
        self.tokens_seen += self.cfg.train.batch_size
        return stats

    def _install_sigterm(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_sigterm(signum: int, frame: Any) -> None:
            self._stop = True  # finish the step, checkpoint, return

        return signal.signal(signal.SIGTERM, on_sigterm)

    @staticmethod
    def _restore_sigterm(previous: Any) -> None:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    def _modes(self) -> list[bool]:
        mode = self.cfg.train.decode
        if mode != "auto":
            return [mode == "sparse"] * len(self.params)
        return [d < AUTO_SPARSE_DENSITY for d in self.density]

    def _precision(self) -> torch.autocast:
        """Autocast for the dictionary's GEMMs under ``train.dtype: bfloat16`` (a no-op context for float32).

        Only the forward runs under it: parameters, gradients, Adam state and the loss reductions
        stay fp32 (outputs are summed into fp32 buffers, L0 counts are fp32, and the sparse path
        recomputes its selected pre-activations in fp32).
        """
        low = self.cfg.train.dtype == "bfloat16"
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=low)

    def _train_step(self, x: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
        cfg, arch = self.cfg, self.cfg.dictionary.architecture
        for _, p in self.named:
            p.grad = None
        with self._precision():
            if self.latents is None:
                groups = cfg.dictionary.matryoshka_groups
                out = forward(self.params, x, self.spec, sparse=self._modes(), groups=groups, ws=self.ws)
            else:
                out = forward_sharded(self.params, x, self.spec, self.latents, sparse=self._modes(), ws=self.ws)
        y = out.outputs[-1]
        recon = reconstruction_loss(out.outputs, t)
        loss, penalty, aux = recon, None, None
        ramp = warmup(self.step, cfg.loss.l0_warmup_steps)
        if arch == JUMPRELU:
            penalty = l0_penalty(
                out.codes,
                cfg.dictionary.l0_target,
                cfg.loss.l0_coefficient * ramp,
                cfg.loss.l0_penalty,
                self.ctx.mean if self.ctx.world > 1 else None,
            )
        elif arch == RELU:
            penalty = l1_penalty(out.codes, self.params, cfg.loss.l1_coefficient * ramp)
            if self.latents:  # each shard's share; summing keeps every shard's gradient its own
                penalty = self.latents.sum(penalty)
        if penalty is not None:
            loss = loss + penalty
        if architecture(arch).needs_k and cfg.loss.aux_coefficient > 0:
            dead = self.tokens_since_fired >= cfg.loss.dead_tokens
            k_aux, mean = cfg.loss.aux_k or max(1, self.source.d_in // 2), self.ctx.mean if self.ctx.world > 1 else None
            if self.latents is None:
                aux = aux_k_loss(out.codes, self.params, x, (t - y).detach(), dead, k_aux, mean)
            else:
                aux = sharded_aux_k_loss(out.codes, self.params, x, (t - y).detach(), dead, k_aux, self.latents, mean)
            if aux is not None:
                loss = loss + cfg.loss.aux_coefficient * aux
        pre_act = PRE_ACT_COEFFICIENT if cfg.loss.pre_act_coefficient is None else cfg.loss.pre_act_coefficient
        if arch == JUMPRELU and pre_act > 0:
            aux = pre_act_loss(self.params, x, self.tokens_since_fired >= cfg.loss.dead_tokens)
            if aux is not None:
                loss = loss + pre_act * aux
        loss.backward()
        trainable = [p for _, p in self.named]
        self.ctx.average_gradients(trainable)
        if cfg.train.decoder_unit_norm:
            remove_parallel_grads(self.params)
        if self.latents is None:
            grad_norm = clip_gradients(trainable, cfg.optim.grad_clip)
        else:
            grad_norm = clip_sharded_gradients(self.named, cfg.optim.grad_clip, self.latents)
        set_lr(self.optimizer, lr_at(self.step, self.steps, cfg.optim))
        self.optimizer.step()
        apply_constraints(
            self.params, unit_decoder=cfg.train.decoder_unit_norm, clamp_threshold=architecture(arch).trains_threshold
        )
        for p in trainable:  # gradients live from backward to the step only: not beside the next batch's forward
            p.grad = None
        self._bookkeeping(out.codes)
        if cfg.loss.resample_every and arch in (RELU, JUMPRELU) and (self.step + 1) % cfg.loss.resample_every == 0:
            self._resample()
        return self._stats(loss, recon, penalty, aux, y, t, out.codes, grad_norm)

    @torch.no_grad()
    def _bookkeeping(self, codes: list) -> None:
        """Dead-latent counters, decode-path densities, BatchTopK's running threshold."""
        for i, code in enumerate(codes):
            fired = self.ctx.union(code.fired).cpu()
            self.tokens_since_fired[i] += self.cfg.train.batch_size
            self.tokens_since_fired[i][fired] = 0
            self.density[i] = float(self.ctx.mean(code.l0_tokens.detach().mean())) / self.cfg.dictionary.d_sae
            if code.batch_threshold is not None:
                tau = self.ctx.minimum(code.batch_threshold)
                theta = self.params[i].threshold
                decay = self.cfg.loss.batchtopk_threshold_decay if self.threshold_ready else 0.0
                theta.mul_(decay).add_(tau * (1 - decay))
        self.threshold_ready = self.threshold_ready or any(c.batch_threshold is not None for c in codes)

    def _resample(self) -> None:
        x, t = self._normalized(*self.source.batch(self.step, self.cfg.train.batch_size))
        dead = self.tokens_since_fired >= self.cfg.loss.dead_tokens
        gen = torch.Generator().manual_seed(self.cfg.train.seed * 7919 + self.step)
        resampled = resample_dead(
            self.dictionary, self.params, self.optimizer, x, t, dead, self.spec, gen, self.cfg.loss.threshold_init
        )
        self.tokens_since_fired[resampled] = 0

    def _stats(self, loss, recon, penalty, aux, y, t, codes, grad_norm) -> dict[str, float]:
        if (self.step + 1) % self.cfg.train.log_every and self.step + 1 != self.steps:
            return {}
        dead = (self.tokens_since_fired >= self.cfg.loss.dead_tokens).float().mean()
        if self.latents:  # equal shards: the mean of the shards' fractions
            dead = self.latents.sum_(dead.to(self.ctx.device)) / self.latents.size
        return {
            "loss": float(self.ctx.mean(loss.detach())),
            "recon": float(self.ctx.mean(recon.detach())),
            "penalty": float(penalty.detach()) if penalty is not None else 0.0,
            "aux": float(aux.detach()) if aux is not None else 0.0,
            "l0": sum(self.density) / len(self.density) * self.cfg.dictionary.d_sae,
            "fvu": float(self.ctx.mean(fvu(y, t))),
            "dead": float(dead),
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
        }
