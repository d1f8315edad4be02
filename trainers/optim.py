"""Adam (fused where torch has it), the learning-rate schedule and the penalty warm-up.

Schedule: linear warm-up from 0 over ``warmup_steps``, constant, then linear
decay to 0 over the last ``decay_fraction`` of the steps.

Example:
    >>> from trainers.config import OptimConfig
    >>> cfg = OptimConfig(lr=1.0, warmup_steps=10, decay_fraction=0.5)
    >>> [round(lr_at(s, 100, cfg), 2) for s in (0, 5, 10, 50, 75, 99)]
    [0.1, 0.6, 1.0, 1.0, 0.5, 0.02]
"""

from __future__ import annotations

import torch

from trainers.config import OptimConfig


def make_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> torch.optim.Adam:
    """Adam(beta1, beta2, eps) over ``named_params``; fused kernels when the device supports them."""
    params = [p for _, p in named_params]
    try:
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    except (RuntimeError, TypeError):  # a device/dtype without a fused kernel
        return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True)


def lr_at(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Learning rate for 0-based ``step`` of ``total_steps``."""
    scale = 1.0
    if cfg.warmup_steps:
        scale = min(scale, (step + 1) / cfg.warmup_steps)
    decay_steps = int(total_steps * cfg.decay_fraction)
    if decay_steps:
        scale = min(scale, (total_steps - step) / decay_steps)
    return cfg.lr * max(scale, 0.0)


def warmup(step: int, warmup_steps: int) -> float:
    """Linear ramp 0 -> 1 over ``warmup_steps`` (1 when there is no warm-up).

    Example:
        >>> warmup(0, 4), warmup(3, 4), warmup(10, 4), warmup(0, 0)
        (0.25, 1.0, 1.0, 1.0)
    """
    return 1.0 if warmup_steps == 0 else min(1.0, (step + 1) / warmup_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    """Clip the global gradient norm; returns the norm before clipping (0 when disabled)."""
    if max_norm is None:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True))
