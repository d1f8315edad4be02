"""Training throughput: our TopK and JumpReLU steps, fp32 and bf16, vs SAELens 6.54 and sparsify 1.3.

Shapes as DESIGN.md section 9: 640 -> 16384 latents, batch 4096 tokens, k = 32,
real Gemma 3 270M layer-6 residual activations (harvested once into a cache
folder with our harvester; ``--random`` uses Gaussian data instead).

A step is everything an optimizer step costs once the batch is in memory:
forward, losses, backward, gradient clipping, Adam, decoder renormalisation and
dead-latent bookkeeping (SAELens: ``SAETrainer._train_step`` minus its scheduler;
sparsify: its ``Trainer.fit`` step, see :mod:`benchmarks.train_peers`).
Candidates run in interleaved rounds so machine load hits them alike; ratios are
per-round medians.

* ``ours topk``: the sparse path (one dense encoder GEMM, gathers for the rest);
* ``ours jumprelu @init``: GS2 init (threshold 0.001, about half the latents
  active): the dense path;
* ``ours jumprelu @L0=64``: thresholds set so ~64 latents fire per token (what a
  trained l0_medium dictionary looks like): the sparse path;
* ``... bf16``: the same under ``train.dtype=bfloat16`` (peers: their forward under
  the same ``torch.autocast``);
* SAELens runs the same computation densely whatever the state.

Before timing, one step of our bf16 TopK and JumpReLU from the fp32 run's initial state on the
same batch must give an FVU within 1% (relative) of the fp32 step's.

Matmul peaks (fp32 and bf16): mean over the three GEMM shapes of a dense step
([4096x640]@[640x16384], [4096x16384]@[16384x640], [640x4096]@[4096x16384]).
FLOPs counted are those a step executes: 2*B*d*S per dense GEMM, 2*nnz*d per sparse
gather/scatter pass (a sparse decode does far fewer than a dense one). "util." is the time
the executed FLOPs would take at the measured peaks (bf16 GEMM FLOPs at the bf16 peak, the
rest at the fp32 peak) divided by the step time, so it never exceeds 100%.
"3-GEMM util." is DESIGN.md section 9's accounting for its 2170 tok/s anchor (3 * 2*B*d*S
per step at the fp32 peak, whatever the step does); kept for comparison with old tables.

    .venv/bin/python -m benchmarks.train_bench [--rounds 3] [--steps 4] [--random]
    .venv/bin/python -m benchmarks.train_bench --threads 1 --clock cpu   # load-insensitive ratios
    .venv/bin/python -m benchmarks.train_bench --profile "ours topk"     # where a step's time goes
    .venv/bin/python -m benchmarks.train_bench --device cuda             # on a GPU
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks import train_peers
from benchmarks.device import add_device_argument, resolve_device
from benchmarks.summary import Headline, add_summary_argument, write_summary
from benchmarks.train_peers import Rows, Work, peer_work

B, D, S, K, L0 = 4096, 640, 16384, 32, 64


def activations(args: argparse.Namespace) -> torch.Tensor:
    """[n, 640] layer-6 resid_post rows of Gemma 3 270M (cached), or Gaussian rows with --random."""
    if args.random:
        return torch.randn(args.tokens, D, generator=torch.Generator().manual_seed(0)) * 30
    from trainers.config import load_config
    from trainers.harvest_shards import HarvestReader
    from trainers.pipeline import harvest_only

    texts = sorted(glob.glob(str(Path(json.__file__).parent.parent / "*.py")))[:60]
    cache = Path(args.cache) / f"tokens-{args.tokens}"
    cfg = load_config(
        None,
        [
            "model.id=google/gemma-3-270m",
            "harvest.layer=6",
            "data.context_size=128",
            f"data.paths={json.dumps(texts)}",
            f"data.max_tokens={args.tokens + 4096}",
            f"harvest.cache_dir={cache}",
            "harvest.batch_sequences=8",
            "train.progress=false",
        ],
    )
    harvest_only(cfg)
    reader = HarvestReader(cache)
    return reader.rows(torch.arange(min(len(reader), args.tokens)))[0][:, 0]


CLOCK = time.perf_counter
DEVICE = torch.device("cpu")
SHAPE = (B, D, S, K, L0)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], n: int) -> float:
    """Median seconds of ``n`` calls after one warm-up call (wall clock, or CPU time with --clock cpu)."""
    step()
    sync()
    times = []
    for _ in range(n):
        t0 = CLOCK()
        step()
        sync()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def matmul_peak(n: int, dtype: torch.dtype = torch.float32) -> float:
    """Mean FLOP/s of the three GEMM shapes of a dense step in ``dtype``."""
    x, w, g = (torch.randn(*shape, device=DEVICE, dtype=dtype) for shape in ((B, D), (D, S), (B, S)))
    wt = torch.randn(S, D, device=DEVICE, dtype=dtype)
    flops = 2 * B * D * S
    shapes = [lambda: x @ w, lambda: g @ wt, lambda: x.T @ g]
    return statistics.mean(flops / time_steps(f, n) for f in shapes)


def ours(arch: str, rows: torch.Tensor, state: str = "init", low: bool = False, log_every: int = 10):
    """A step function for our trainer, plus a function giving the :class:`Work` of the last step."""
    from trainers.config import load_config
    from trainers.distributed import DistContext
    from trainers.sources import ActivationSource
    from trainers.trainer import Trainer

    data = Rows(rows, B)

    class Source(ActivationSource):
        d_in = d_out = D

        def batch(self, step, batch_size, rank=0, world=1):
            x = data.next().unsqueeze(1)
            return x, x

    sparsity = f"dictionary.k={K}" if arch == "topk" else f"dictionary.l0_target={L0}"
    cfg = load_config(
        None,
        [
            "synthetic.d_in=640",
            f"dictionary.architecture={arch}",
            sparsity,
            f"dictionary.d_sae={S}",
            f"train.batch_size={B}",
            "train.tokens=40960000",
            "train.normalization_tokens=16384",
            "train.progress=false",
            f"train.log_every={log_every}",
            f"train.dtype={'bfloat16' if low else 'float32'}",
            "optim.lr=7e-5",
        ],
    )
    trainer = Trainer(cfg, Source(), DistContext(device=DEVICE))
    if state == "dead":  # half the latents dead: the aux-k loss is active
        trainer.tokens_since_fired[0, : S // 2] = cfg.loss.dead_tokens
    if state == "trained":
        with torch.no_grad():
            x, _ = trainer._normalized(*trainer.source.batch(0, B))
            pre = x[:, 0] @ trainer.params[0].w_enc + trainer.params[0].b_enc
            trainer.params[0].threshold.copy_(torch.kthvalue(pre.cpu(), B - B * L0 // S, dim=0).values)
        trainer.density = [L0 / S]
        data.i = 0
    last = {}

    def step() -> dict:
        x, t = trainer._normalized(*trainer.source.batch(0, B))
        stats = trainer._train_step(x, t)
        if state == "dead":
            trainer.tokens_since_fired[0, : S // 2] = cfg.loss.dead_tokens
        last["nnz"] = trainer.density[0] * S * B
        return stats

    def work() -> Work:
        if not trainer._modes()[0]:  # encoder GEMM, decoder GEMM, 2 decoder-backward GEMMs, encoder-weight GEMM
            return Work(5 * 2 * B * D * S, 0.0, low)
        # dense encoder GEMM + 4 sparse passes over nnz*d (+1 under bf16: the selected entries recomputed in fp32)
        return Work(2 * B * D * S, (5 if low else 4) * 2 * last["nnz"] * D, low)

    return step, work


def check_low_precision(rows: torch.Tensor) -> None:
    """One step from the same initial state on the same batch: bf16 FVU within 1% of fp32's."""
    for arch in ("topk", "jumprelu"):
        fvus = []
        for low in (False, True):
            torch.manual_seed(0)
            step, _work = ours(arch, rows, low=low, log_every=1)
            fvus.append(step()["fvu"])
        rel = abs(fvus[1] - fvus[0]) / fvus[0]
        print(f"check {arch}: first-step FVU fp32 {fvus[0]:.5f}, bf16 {fvus[1]:.5f} (rel. diff {rel:.2e})", flush=True)
        if rel > 0.01:
            raise SystemExit(f"bf16 {arch} step differs from fp32 by {rel:.1%} in FVU: not timing it")


def builders(rows: torch.Tensor) -> dict[str, Callable]:
    out: dict[str, Callable] = {
        "ours topk": lambda: ours("topk", rows),
        "ours topk bf16": lambda: ours("topk", rows, low=True),
        "ours topk (aux-k active)": lambda: ours("topk", rows, "dead"),
        "ours jumprelu @init": lambda: ours("jumprelu", rows),
        "ours jumprelu @init bf16": lambda: ours("jumprelu", rows, low=True),
        "ours jumprelu @L0=64": lambda: ours("jumprelu", rows, "trained"),
    }
    if train_peers.sparsify(rows, SHAPE, probe=True):
        out["sparsify topk"] = lambda: (train_peers.sparsify(rows, SHAPE), None)
        out["sparsify topk bf16"] = lambda: (train_peers.sparsify(rows, SHAPE, low=True), None)
    for name, arch, state in (
        ("saelens topk", "topk", "init"),
        ("saelens topk (aux-k active)", "topk", "dead"),
        ("saelens jumprelu", "jumprelu", "init"),
    ):
        if train_peers.saelens(arch, rows[:8], SHAPE, state, probe=True):
            out[name] = lambda arch=arch, state=state: (train_peers.saelens(arch, rows, SHAPE, state), None)
    return out


def profile(build: Callable, steps: int) -> None:
    """Where one candidate's step spends its time: torch profiler, ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step, _work = build()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    key = "self_cuda_time_total" if DEVICE.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per candidate per round")
    parser.add_argument("--tokens", type=int, default=65536, help="activation rows to train on")
    parser.add_argument("--random", action="store_true", help="Gaussian data instead of Gemma activations")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "scope-hub-bench-harvest-l6"))
    parser.add_argument("--threads", type=int, default=None)
    add_device_argument(parser)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="candidates to run (names as in the table)")
    parser.add_argument("--profile", metavar="NAME", help="profile this candidate's step instead of timing")
    add_summary_argument(parser)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (with --threads 1, insensitive to other jobs' load)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK, DEVICE
    DEVICE = resolve_device(args.device)
    CLOCK = time.process_time if args.clock == "cpu" and DEVICE.type == "cpu" else time.perf_counter
    rows = activations(args).to(DEVICE)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {DEVICE}, {rows.shape[0]} activation "
        f"rows ({'random' if args.random else 'Gemma 3 270M layer 6 resid_post'})",
        flush=True,
    )
    candidates = builders(rows)
    if args.profile:
        profile(candidates[args.profile], args.steps)
        return
    if args.only:
        candidates = {name: build for name, build in candidates.items() if name in args.only}
    check_low_precision(rows)
    results: dict[str, list[float]] = {name: [] for name in candidates}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    utilisation: dict[str, list[float]] = {name: [] for name in candidates}
    for r in range(args.rounds):
        peaks["fp32"].append(matmul_peak(3))
        peaks["bf16"].append(matmul_peak(3, torch.bfloat16))
        this_round = {key: values[-1] for key, values in peaks.items()}
        for name, build in candidates.items():  # built per round and dropped: one model in memory at a time
            step, work = build()
            seconds = time_steps(step, args.steps)
            results[name].append(B / seconds)
            done = work() if work is not None else peer_work(name, SHAPE)
            if done is not None:
                utilisation[name].append(done.seconds_at_peak(this_round) / seconds)
            del step, work
            gc.collect()
        print(
            f"round {r + 1}: peaks fp32 {this_round['fp32'] / 1e9:.0f}, bf16 {this_round['bf16'] / 1e9:.0f} GFLOP/s; "
            + ", ".join(f"{n} {v[-1]:.0f}" for n, v in results.items()),
            flush=True,
        )
    report(results, peaks, utilisation)
    write_summary(args.summary, headlines(results, peaks, utilisation))


def paired_ratio(results: dict, ours_name: str, base: str) -> float:
    return statistics.median(o / s for o, s in zip(results[ours_name], results[base]))


COMPARISONS = (
    ("ours topk", "saelens topk", ">= 3"),
    ("ours topk", "sparsify topk", ">= 1.6"),
    ("ours topk bf16", "sparsify topk bf16", ">= 1"),
    ("ours topk bf16", "ours topk", None),
    ("ours topk bf16", "saelens topk", None),
    ("ours topk (aux-k active)", "saelens topk (aux-k active)", None),
    ("ours jumprelu @init", "saelens jumprelu", ">= 2"),
    ("ours jumprelu @init bf16", "saelens jumprelu", ">= 3"),
    ("ours jumprelu @L0=64", "saelens jumprelu", ">= 2"),
)


def headlines(results: dict, peaks: dict, utilisation: dict) -> list[Headline]:
    """The training speed goals (TopK and JumpReLU against SAELens and sparsify, fp32 and bf16)."""
    peak = statistics.median(peaks["fp32"])
    rows = []
    if "ours topk" in results:
        topk = statistics.median(results["ours topk"])
        rows.append(
            Headline(
                "train",
                "TopK step: 3-GEMM equivalent FLOP/s / matmul peak",
                topk * 3 * 2 * D * S / peak,
                unit="of peak",
                goal=">= 0.75",
                note=f"{topk:.0f} tok/s, peak {peak / 1e9:.0f} GFLOP/s",
            )
        )
    gemm_ratio = statistics.median(b / f for b, f in zip(peaks["bf16"], peaks["fp32"]))
    if "ours topk bf16" in results and "ours topk" in results:
        speedup = paired_ratio(results, "ours topk bf16", "ours topk")
        rows.append(
            Headline(
                "train",
                "TopK bf16 speed-up / bf16-fp32 GEMM ratio",
                speedup / gemm_ratio,
                unit="of GEMM ratio",
                goal=">= 0.75",
                note=f"bf16 step {speedup:.2f}x fp32 step; bf16 GEMM {gemm_ratio:.2f}x fp32 GEMM",
            )
        )
    for name in ("ours topk bf16", "ours jumprelu @init bf16"):
        if utilisation.get(name):
            rows.append(
                Headline(
                    "train",
                    f"{name}: executed FLOPs at peak / step time",
                    statistics.median(utilisation[name]),
                    unit="of peak",
                    note=f"peaks fp32 {peak / 1e9:.0f}, bf16 {statistics.median(peaks['bf16']) / 1e9:.0f} GFLOP/s",
                )
            )
    for ours_name, base, goal in COMPARISONS:
        if base in results and ours_name in results:
            rows.append(
                Headline(
                    "train",
                    f"{ours_name} / {base} (tok/s)",
                    paired_ratio(results, ours_name, base),
                    goal=goal,
                    note=f"{statistics.median(results[ours_name]):.0f} vs {statistics.median(results[base]):.0f} tok/s",
                )
            )
    return rows


def report(results: dict, peaks: dict, utilisation: dict) -> None:
    med = {name: statistics.median(v) for name, v in results.items()}
    peak, peak_low = statistics.median(peaks["fp32"]), statistics.median(peaks["bf16"])
    print(
        f"\nmatmul peaks on the step's GEMM shapes: fp32 {peak / 1e9:.0f} GFLOP/s, bf16 {peak_low / 1e9:.0f} GFLOP/s "
        f"(bf16/fp32 {peak_low / peak:.2f}x; rounds fp32 {', '.join(f'{p / 1e9:.0f}' for p in peaks['fp32'])})"
    )
    print(
        f"{'candidate':32s} {'tok/s':>8s} {'util.':>7s} {'3-GEMM util.':>13s} {'vs SAELens':>10s} {'vs sparsify':>11s}"
    )
    for name, value in med.items():
        util = f"{statistics.median(utilisation[name]):.0%}" if utilisation[name] else ""
        equivalent = f"{value / B * 3 * 2 * B * D * S / peak:.0%}"
        base = "saelens topk" if "topk" in name else "saelens jumprelu"
        if "aux-k" in name:
            base = "saelens topk (aux-k active)"
        ratio = f"{paired_ratio(results, name, base):.2f}x" if name.startswith("ours") and base in results else ""
        peer = "sparsify topk bf16" if name.endswith("bf16") else "sparsify topk"
        vs_peer = ""
        if name.startswith("ours topk") and "aux-k" not in name and peer in results:
            vs_peer = f"{paired_ratio(results, name, peer):.2f}x"
        print(f"{name:32s} {value:8.0f} {util:>7s} {equivalent:>13s} {ratio:>10s} {vs_peer:>11s}")
    json.dump({"tok_s": med, "peak_flops": peak, "peak_flops_bf16": peak_low}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
