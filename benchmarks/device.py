"""``--device {cpu,cuda}`` for every benchmark script: parsing, refusal, clocks and peaks.

Every script in ``benchmarks/`` takes ``--device`` (default ``cpu``). ``cuda`` is refused with a
clear message where ``torch.cuda`` is unavailable, so nothing depends on a GPU. On CUDA, work is
asynchronous: :func:`synchronize` must run before a clock is read, and peaks come from
``torch.cuda.max_memory_allocated`` (:func:`reset_peak` / :func:`peak_mib`), not from the
process's RSS.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_device_argument(parser)
    >>> parser.parse_args([]).device
    'cpu'
    >>> str(resolve_device("cpu"))
    'cpu'
"""

from __future__ import annotations

import argparse
import resource
import sys
from typing import Any

DEVICES = ("cpu", "cuda")


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where torch work runs (cuda: clocks read after torch.cuda.synchronize, "
        "peaks from torch.cuda.max_memory_allocated)",
    )


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(name: str) -> Any:
    """``torch.device(name)``; exits with a clear message when ``cuda`` is asked for and not available."""
    import torch

    if name not in DEVICES:
        sys.exit(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "--device cuda: torch.cuda is not available here (no GPU, or a CPU-only torch build "
            f"{torch.__version__}); run without --device or with --device cpu"
        )
    return torch.device(name)


def check_device(parser: argparse.ArgumentParser, name: str) -> None:
    """Refuse ``--device cuda`` at parse time, for scripts that do not otherwise import torch early."""
    if name == "cuda" and not cuda_available():
        parser.error("--device cuda: torch.cuda is not available here; run with --device cpu")


def synchronize(device: Any) -> None:
    """Wait for queued GPU work before a clock is read (a no-op on CPU)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> None:
    """Start a fresh peak-memory window on a GPU (CPU peaks are the process's ``ru_maxrss``)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: Any) -> float:
    """Peak memory in MiB: ``torch.cuda.max_memory_allocated`` on a GPU, else this process's ``ru_maxrss``."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
