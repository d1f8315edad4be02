"""The peers' training steps for :mod:`benchmarks.train_bench`: SAELens 6.54 and EleutherAI sparsify.

Each builder returns a zero-argument step function (one optimizer step on the next batch of
``rows``), or None when the peer is not importable. Shapes come from the caller; ``low=True``
runs the peer's forward and loss under ``torch.autocast(..., bfloat16)``, the same autocast our
``train.dtype: bfloat16`` uses (parameters and Adam state stay fp32 in both).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Work:
    """FLOPs one step executes: dense GEMMs (in the step's GEMM precision) and fp32 sparse passes."""

    gemm: float
    sparse: float
    low: bool = False

    def seconds_at_peak(self, peaks: dict[str, float]) -> float:
        return self.gemm / peaks["bf16" if self.low else "fp32"] + self.sparse / peaks["fp32"]

    @property
    def total(self) -> float:
        return self.gemm + self.sparse


def peer_work(name: str, shape: tuple[int, int, int, int, int]) -> Work | None:
    """What the peers' steps execute (dense: SAELens's 5 GEMMs; sparsify: 1 GEMM + 5 passes over B*k*d)."""
    batch, d, s, k, _l0 = shape
    low = name.endswith("bf16")
    if name.startswith("saelens"):
        return Work(5 * 2 * batch * d * s, 0.0, low)
    if name.startswith("sparsify"):
        return Work(2 * batch * d * s, 5 * 2 * batch * k * d, low)
    return None


class Rows:
    """Batches of ``batch`` rows drawn from the activation rows (a fixed random order)."""

    def __init__(self, rows: torch.Tensor, batch: int) -> None:
        self.rows, self.batch, self.i = rows, batch, 0
        self.order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0)).to(rows.device)

    def next(self) -> torch.Tensor:
        idx = self.order[torch.arange(self.i, self.i + self.batch, device=self.rows.device) % self.rows.shape[0]]
        self.i += self.batch
        return self.rows[idx]


def autocast(device: str, low: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device, dtype=torch.bfloat16) if low else contextlib.nullcontext()


def saelens(
    arch: str, rows: torch.Tensor, shape: tuple[int, int, int, int, int], state: str = "init", probe: bool = False
) -> Callable[[], None] | bool | None:
    """SAELens 6.54's training step (``SAETrainer._train_step`` minus scheduler and logging)."""
    try:
        from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
    except ImportError:
        return None
    if probe:
        return True
    batch, d, s, k, l0 = shape
    device = str(rows.device)
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=s, k=k, dtype="float32", device=device))
        coefficients = {}
    else:
        sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                d_in=d,
                d_sae=s,
                dtype="float32",
                device=device,
                jumprelu_sparsity_loss_mode="quadratic",
                target_l0=l0,
                jumprelu_bandwidth=0.001,
                jumprelu_init_threshold=0.001,
            )
        )
        coefficients = {"l0": 1.0}
    optimizer = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    data = Rows(rows / rows.norm(dim=-1).mean(), batch)
    dead = torch.zeros(s, dtype=torch.bool, device=rows.device)
    if state == "dead":
        dead[: s // 2] = True
    since_fired = torch.zeros(s, device=rows.device)

    def step() -> None:
        sae.train()
        out = sae.training_forward_pass(
            step_input=TrainStepInput(
                sae_in=data.next(),
                coefficients=coefficients,
                dead_neuron_mask=dead,
                n_training_steps=0,
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def sparsify(
    rows: torch.Tensor, shape: tuple[int, int, int, int, int], low: bool = False, probe: bool = False
) -> Callable[[], None] | bool | None:
    """sparsify 1.3's TopK ``SparseCoder`` step as its ``Trainer.fit`` runs it.

    Unit-norm decoder, forward with the dead-latent mask (aux-k while latents are dead), fvu
    loss, backward, removal of the gradient parallel to decoder rows, Adam, dead-latent
    counters. Plus ``clip_grad_norm_(1.0)``: sparsify's trainer does not clip, ours does, so
    both steps do the same work. The decoder is sparsify's eager ``embedding_bag`` (its Triton
    kernel is GPU-only and chosen by sparsify itself on a GPU).
    """
    try:
        from sparsify import SparseCoder, SparseCoderConfig
    except ImportError:
        return None
    if probe:
        return True
    batch, d, s, k, _l0 = shape
    torch.manual_seed(0)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=s, k=k), device=rows.device, dtype=torch.float32)
    optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4 / (s / 2**14) ** 0.5)
    data = Rows(rows, batch)
    since_fired = torch.zeros(s, dtype=torch.long, device=rows.device)
    dead_after = 10_000_000

    def step() -> None:
        sae.set_decoder_norm_to_unit_norm()
        x = data.next()
        with autocast(rows.device.type, low):
            out = sae(x, dead_mask=since_fired > dead_after)
            loss = out.fvu + out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            since_fired.add_(batch)
            since_fired[out.latent_indices.flatten()] = 0

    return step
