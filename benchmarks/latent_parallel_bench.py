"""Latent-parallel TopK training: per-rank peak memory against the memory model, tok/s, bytes communicated.

For each R in ``--lp`` this starts R gloo processes (one CPU share each) running the real
:class:`~trainers.trainer.Trainer` with ``train.latent_parallel=R``, and reports per rank:

* the process floor: resident memory right after ``init_process_group`` (torch + gloo, nothing
  else loaded yet);
* the peak resident memory of the timed steps above that floor, against the memory model
  ``16 x parameters / R`` (fp32 weights, gradients, Adam's two moments) ``+ 4 x B x S / R`` (the
  step's pre-activations) ``+ 2 x 4 x B x d_in`` (the batch as read and its normalised copy), and
  their ratio (the goal: at most 1.15), and the same ratio without the code and data loaded
  after the floor (the trainer's imports and the batches, which do not shrink with R either);
* tokens per second over ``--steps`` steps after one warm-up step;
* bytes each rank put into all-reduce / all-gather per step against
  :func:`trainers.latent_parallel.step_bytes` (the formula counts the decode, L0 and TopK
  gathers; the rest are a few scalars: clip norm, stop flag).

The batches are drawn once from a planted dictionary before the floor is read and served from
memory: drawing one (dense ``[B, atoms]`` codes) costs more memory than a real harvest's row
gather, and is not the trainer's. Afterwards rank 0's output of one forward is checked against an
unsharded forward of the gathered weights (R > 1), so the numbers describe a correct computation;
the peak is taken over the timed steps only (the kernel's VmHWM, reset after the warm-up step).
``--malloc-mmap-threshold BYTES`` sets glibc's ``MALLOC_MMAP_THRESHOLD_`` for the ranks (glibc
otherwise keeps freed blocks of up to 32 MiB in its heaps; docs/training.md has both).

    python benchmarks/latent_parallel_bench.py --d-sae 65536 --lp 1 2 4
    python benchmarks/latent_parallel_bench.py --d-sae 262144 --lp 2 4 --batch 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.device import add_device_argument, resolve_device, synchronize  # noqa: E402

PARTS = (1, 2, 4, 8)
"""What ``--only`` can pick: latent-parallel group sizes R (the same as ``--lp``)."""


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM); False where /proc does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_bytes(reset: bool) -> int:
    """Peak RSS since :func:`_reset_peak` (else over the process's life)."""
    if reset:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _count_bytes(counter: dict[str, int]) -> None:
    """Wrap the collectives the trainer calls so every payload is counted."""
    import torch.distributed as dist

    def wrap(name: str) -> None:
        real = getattr(dist, name)

        def counted(*args, **kwargs):
            tensor = args[1] if name == "all_gather" else args[0]
            counter[name] = counter.get(name, 0) + tensor.numel() * tensor.element_size()
            return real(*args, **kwargs)

        setattr(dist, name, counted)

    for name in ("all_reduce", "all_gather", "gather"):
        wrap(name)


class _Batches:
    """The planted source's batches, drawn once and served from memory (steps wrap around)."""

    def __init__(self, source, batch: int, count: int) -> None:
        self.source, self.count = source, count
        self.drawn = [source.batch(step, batch) for step in range(count)]
        self.n_layers, self.d_in, self.d_out = source.n_layers, source.d_in, source.d_out
        self.reconstructs_input = source.reconstructs_input

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1):
        return self.drawn[step % self.count]

    def __getattr__(self, name: str):
        return getattr(self.source, name)


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    from trainers.distributed import DistContext

    with DistContext.from_env(args.device) as ctx:
        # torch + gloo after init_process_group, nothing else yet (on a GPU: what the allocator already holds)
        floor = torch.cuda.memory_allocated(ctx.device) if ctx.device.type == "cuda" else _rss_bytes()
        _train_and_measure(rank, world, args, out, ctx, floor)


def _train_and_measure(rank: int, world: int, args: argparse.Namespace, out: str, ctx, floor: int) -> None:
    from trainers.config import load_config
    from trainers.forward import SparsitySpec, forward, layer_params
    from trainers.latent_parallel import forward_sharded, step_bytes
    from trainers.sources import SyntheticSource
    from trainers.synthetic import PlantedDictionary
    from trainers.trainer import Trainer

    threads = max(1, (os.cpu_count() or 1) // world) if args.threads is None else args.threads
    cfg = load_config(
        None,
        [
            "synthetic.d_in=640",
            "synthetic.n_atoms=4096",
            "dictionary.architecture=topk",
            f"dictionary.k={args.k}",
            f"dictionary.d_sae={args.d_sae}",
            f"train.batch_size={args.batch}",
            f"train.tokens={args.batch * (args.steps + 1)}",
            "train.normalize=false",
            "train.decode=sparse",
            f"train.threads={threads}",
            f"train.latent_parallel={world}",
            "train.progress=false",
            "optim.warmup_steps=0",
            "eval.tokens=0",
        ],
    )
    planted = SyntheticSource(PlantedDictionary.create(n_atoms=4096, d_in=640, active_per_token=32, seed=0), seed=0)
    source = _Batches(planted, args.batch, 2)
    cuda = ctx.device.type == "cuda"
    loaded = 0 if cuda else _rss_bytes() - floor  # the trainer's code and the data, before any dictionary exists
    trainer = Trainer(cfg, source, ctx)
    trainer.advance()  # warm-up: allocates the workspace and Adam's state
    if cuda:  # GPU peaks from the allocator: RSS does not see device memory
        synchronize(ctx.device)
        torch.cuda.reset_peak_memory_stats(ctx.device)
    hwm_reset = _reset_peak()  # the peak of the training steps, not of initialisation's temporaries
    counter: dict[str, int] = {}
    if world > 1:
        _count_bytes(counter)
    synchronize(ctx.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.advance()
    synchronize(ctx.device)
    elapsed = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(ctx.device) if cuda else _peak_bytes(hwm_reset)) - floor
    param_bytes = sum(p.numel() * p.element_size() for p in trainer.dictionary.parameters())
    activations = args.batch * (args.d_sae // world) * 4 + 2 * args.batch * 640 * 4
    result = {
        "R": world,
        "rank": rank,
        "threads": threads,
        "floor_bytes": floor,
        "peak_bytes": peak,
        "loaded_bytes": loaded,
        "model_bytes": 4 * param_bytes + activations,
        "tok_s": args.batch * args.steps / elapsed,
        "measured_per_step": {k: v // args.steps for k, v in counter.items()},
        "formula_per_step": step_bytes(args.batch, args.k, world, 640),
    }
    if world > 1 and args.check:  # the sharded forward equals the unsharded one on the gathered weights
        whole = trainer.whole_dictionary()
        x, _ = trainer._normalized(*source.batch(0, args.batch))
        sharded = forward_sharded(trainer.params, x, trainer.spec, trainer.latents, sparse=True).outputs[-1]
        if rank == 0:
            spec = SparsitySpec("topk", k=args.k)
            reference = forward(layer_params(whole), x, spec, sparse=True).outputs[-1]
            torch.testing.assert_close(sharded, reference, atol=1e-4, rtol=1e-4)
            del whole, reference
    Path(out, f"r{world}_{rank}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-sae", type=int, default=65536)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=None, help="per rank (default: cores / R)")
    add_device_argument(parser)
    parser.add_argument("--only", type=int, nargs="+", choices=PARTS, default=None, help="group sizes (wins over --lp)")
    parser.add_argument("--no-check", dest="check", action="store_false")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, help="glibc MALLOC_MMAP_THRESHOLD_")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    resolve_device(args.device)
    args.lp = args.only or args.lp
    if args.malloc_mmap_threshold is not None:  # read by glibc when each spawned rank starts
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
    gib = 1 << 30
    print(f"640 -> {args.d_sae} TopK k={args.k}, batch {args.batch}, {args.steps} timed steps, device {args.device}")
    print(f"malloc mmap threshold: {args.malloc_mmap_threshold or 'glibc default (dynamic, up to 32 MiB)'}")
    print(
        "| R | rank | floor (GiB) | peak - floor (GiB) | model (GiB) | (peak - floor) / model | code + data (GiB) | "
        "(peak - floor - code - data) / model | tok/s | "
        "all-reduce B/step (formula) | all-gather B/step (formula) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for world in args.lp:
        with tempfile.TemporaryDirectory() as out:
            mp.start_processes(_worker, (world, _free_port(), args, out), nprocs=world, start_method="spawn")
            for rank in range(world):
                r = json.loads(Path(out, f"r{world}_{rank}.json").read_text())
                measured, formula = r["measured_per_step"], r["formula_per_step"]
                print(
                    f"| {world} | {rank} | {r['floor_bytes'] / gib:.2f} | {r['peak_bytes'] / gib:.2f} | "
                    f"{r['model_bytes'] / gib:.2f} | {r['peak_bytes'] / r['model_bytes']:.2f} | "
                    f"{r['loaded_bytes'] / gib:.2f} | {(r['peak_bytes'] - r['loaded_bytes']) / r['model_bytes']:.2f} | "
                    f"{r['tok_s']:.0f} | "
                    f"{measured.get('all_reduce', 0)} ({formula['all_reduce']}) | "
                    f"{measured.get('all_gather', 0)} ({formula['all_gather']}) |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
