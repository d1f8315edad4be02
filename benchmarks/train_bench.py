"""Training throughput: our TopK and JumpReLU steps vs SAELens 6.54, and the fp32 matmul peak.

Shapes as DESIGN.md section 9: 640 -> 16384 latents, batch 4096 tokens, k = 32,
real Gemma 3 270M layer-6 residual activations (harvested once into a cache
folder with our harvester; ``--random`` uses Gaussian data instead).

A step is everything an optimizer step costs once the batch is in memory:
forward, losses, backward, gradient clipping, Adam, decoder renormalisation and
dead-latent bookkeeping (SAELens: ``SAETrainer._train_step`` minus its scheduler).
Candidates run in interleaved rounds so machine load hits them alike; ratios are
per-round medians.

* ``ours topk``: the sparse path (one dense encoder GEMM, gathers for the rest);
* ``ours jumprelu @init``: GS2 init (threshold 0.001, about half the latents
  active): the dense path;
* ``ours jumprelu @L0=64``: thresholds set so ~64 latents fire per token (what a
  trained l0_medium dictionary looks like): the sparse path;
* SAELens runs the same computation densely whatever the state.

Matmul peak: median time of the three GEMM shapes of a dense step
([4096x640]@[640x16384], [4096x16384]@[16384x640], [640x4096]@[4096x16384]).
"util." counts the FLOPs a step actually performs (2*B*d*S per dense GEMM,
2*nnz*d per sparse gather/scatter) divided by the step time and the peak.
"3-GEMM util." is DESIGN.md section 9's accounting for its 2170 tok/s anchor (a TopK
step with sparse decode doing three dense GEMMs: encoder forward, encoder weight
gradient, input gradient): 3 * 2*B*d*S per step, whatever the step really does.

    .venv/bin/python -m benchmarks.train_bench [--rounds 3] [--steps 4] [--random]
    .venv/bin/python -m benchmarks.train_bench --threads 1 --clock cpu   # load-insensitive ratios
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
from pathlib import Path

import torch

from benchmarks.summary import Headline, add_summary_argument, write_summary

B, D, S, K, L0 = 4096, 640, 16384, 32, 64


def activations(args: argparse.Namespace) -> torch.Tensor:
    """[n, 640] layer-6 resid_post rows of Gemma 3 270M (cached), or Gaussian rows with --random."""
    if args.random:
        return torch.randn(args.tokens, D) * 30
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


def time_steps(step, n: int) -> float:
    """Median seconds of ``n`` calls after one warm-up call (wall clock, or CPU time with --clock cpu)."""
    step()
    times = []
    for _ in range(n):
        t0 = CLOCK()
        step()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def matmul_peak(n: int) -> float:
    x, w, g = torch.randn(B, D), torch.randn(D, S), torch.randn(B, S)
    wt = torch.randn(S, D)
    flops = 2 * B * D * S
    shapes = [lambda: x @ w, lambda: g @ wt, lambda: x.T @ g]
    return statistics.mean(flops / time_steps(f, n) for f in shapes)


class _Rows:
    """Batches drawn from the activation rows (a fixed random order)."""

    def __init__(self, rows: torch.Tensor) -> None:
        self.rows, self.i = rows, 0
        self.order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(0))

    def next(self) -> torch.Tensor:
        idx = self.order[torch.arange(self.i, self.i + B) % self.rows.shape[0]]
        self.i += B
        return self.rows[idx]


def ours(arch: str, rows: torch.Tensor, state: str = "init"):
    """A step function for our trainer, plus a function giving the FLOPs of the last step."""
    from trainers.config import load_config
    from trainers.sources import ActivationSource
    from trainers.trainer import Trainer

    data = _Rows(rows)

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
            "optim.lr=7e-5",
        ],
    )
    trainer = Trainer(cfg, Source())
    if state == "dead":  # half the latents dead: the aux-k loss is active
        trainer.tokens_since_fired[0, : S // 2] = cfg.loss.dead_tokens
    if state == "trained":
        with torch.no_grad():
            x, _ = trainer._normalized(*trainer.source.batch(0, B))
            pre = x[:, 0] @ trainer.params[0].w_enc + trainer.params[0].b_enc
            trainer.params[0].threshold.copy_(torch.kthvalue(pre, B - B * L0 // S, dim=0).values)
        trainer.density = [L0 / S]
    last = {}

    def step() -> None:
        x, t = trainer._normalized(*trainer.source.batch(0, B))
        trainer._train_step(x, t)
        if state == "dead":
            trainer.tokens_since_fired[0, : S // 2] = cfg.loss.dead_tokens
        last["nnz"] = trainer.density[0] * S * B

    def flops() -> float:
        sparse_mode = trainer._modes()[0]
        if not sparse_mode:  # encoder GEMM, decoder GEMM, 2 decoder-backward GEMMs, encoder-weight GEMM
            return 5 * 2 * B * D * S
        return 2 * B * D * S + 4 * 2 * last["nnz"] * D  # dense encoder GEMM + 4 sparse passes over nnz*d

    return step, flops


def saelens(arch: str, rows: torch.Tensor, state: str = "init", probe: bool = False):
    """SAELens 6.54's training step on the same batches (None when sae_lens is not importable)."""
    try:
        from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput
    except ImportError:
        return None
    if probe:
        return True
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=S, k=K, dtype="float32", device="cpu"))
        coefficients = {}
    else:
        sae = JumpReLUTrainingSAE(
            JumpReLUTrainingSAEConfig(
                d_in=D,
                d_sae=S,
                dtype="float32",
                device="cpu",
                jumprelu_sparsity_loss_mode="quadratic",
                target_l0=L0,
                jumprelu_bandwidth=0.001,
                jumprelu_init_threshold=0.001,
            )
        )
        coefficients = {"l0": 1.0}
    optimizer = torch.optim.Adam(sae.parameters(), lr=7e-5, betas=(0.0, 0.999))
    data = _Rows(rows / rows.norm(dim=-1).mean())
    dead = torch.zeros(S, dtype=torch.bool)
    if state == "dead":
        dead[: S // 2] = True
    since_fired = torch.zeros(S)

    def step() -> None:  # SAETrainer._train_step, without its scheduler and logging
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per candidate per round")
    parser.add_argument("--tokens", type=int, default=65536, help="activation rows to train on")
    parser.add_argument("--random", action="store_true", help="Gaussian data instead of Gemma activations")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "scope-hub-bench-harvest-l6"))
    parser.add_argument("--threads", type=int, default=None)
    add_summary_argument(parser)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (with --threads 1, insensitive to other jobs' load)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    rows = activations(args)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rows.shape[0]} activation rows "
        f"({'random' if args.random else 'Gemma 3 270M layer 6 resid_post'})",
        flush=True,
    )
    builders = {
        "ours topk": lambda: ours("topk", rows),
        "ours topk (aux-k active)": lambda: ours("topk", rows, "dead"),
        "ours jumprelu @init": lambda: ours("jumprelu", rows),
        "ours jumprelu @L0=64": lambda: ours("jumprelu", rows, "trained"),
    }
    for name, arch, state in (
        ("saelens topk", "topk", "init"),
        ("saelens topk (aux-k active)", "topk", "dead"),
        ("saelens jumprelu", "jumprelu", "init"),
    ):
        if saelens(arch, rows[:8], state, probe=True) is not None:
            builders[name] = lambda arch=arch, state=state: (saelens(arch, rows, state), None)
    results: dict[str, list[float]] = {name: [] for name in builders}
    peaks, utilisation = [], {name: [] for name in builders}
    for r in range(args.rounds):
        peaks.append(matmul_peak(3))
        for name, build in builders.items():  # built per round and dropped: one model in memory at a time
            step, flops = build()
            seconds = time_steps(step, args.steps)
            results[name].append(B / seconds)
            if flops is not None:
                utilisation[name].append(flops() / seconds / peaks[-1])
            del step, flops
            gc.collect()
        print(
            f"round {r + 1}: peak {peaks[-1] / 1e9:.0f} GFLOP/s, "
            + ", ".join(f"{n} {v[-1]:.0f}" for n, v in results.items()),
            flush=True,
        )
    report(results, peaks, utilisation)
    write_summary(args.summary, headlines(results, peaks))


def paired_ratio(results: dict, ours_name: str, base: str) -> float:
    return statistics.median(o / s for o, s in zip(results[ours_name], results[base]))


def headlines(results: dict, peaks: list) -> list[Headline]:
    """The training speed goals, as DESIGN.md section 9 sets them."""
    peak = statistics.median(peaks)
    topk = statistics.median(results["ours topk"])
    rows = [
        Headline(
            "train",
            "TopK step: 3-GEMM equivalent FLOP/s / matmul peak",
            topk * 3 * 2 * D * S / peak,
            unit="of peak",
            goal=">= 0.75",
            note=f"{topk:.0f} tok/s, peak {peak / 1e9:.0f} GFLOP/s",
        )
    ]
    for ours_name, base, goal in (
        ("ours topk", "saelens topk", ">= 3"),
        ("ours topk (aux-k active)", "saelens topk (aux-k active)", None),
        ("ours jumprelu @init", "saelens jumprelu", ">= 2"),
        ("ours jumprelu @L0=64", "saelens jumprelu", ">= 2"),
    ):
        if base in results:
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


def report(results: dict, peaks: list, utilisation: dict) -> None:
    med = {name: statistics.median(v) for name, v in results.items()}
    print(
        f"\nfp32 matmul peak on the step's GEMM shapes: {statistics.median(peaks) / 1e9:.0f} GFLOP/s "
        f"(rounds: {', '.join(f'{p / 1e9:.0f}' for p in peaks)})"
    )
    print(f"{'candidate':32s} {'tok/s':>8s} {'util.':>7s} {'3-GEMM util.':>13s} {'vs SAELens':>10s}")
    peak = statistics.median(peaks)
    for name, value in med.items():
        util = f"{statistics.median(utilisation[name]):.0%}" if utilisation[name] else ""
        equivalent = f"{value / B * 3 * 2 * B * D * S / peak:.0%}"
        base = "saelens topk" if "topk" in name else "saelens jumprelu"
        if "aux-k" in name:
            base = "saelens topk (aux-k active)"
        ratio = ""
        if name.startswith("ours") and base in results:
            ratio = f"{paired_ratio(results, name, base):.2f}x"
        print(f"{name:32s} {value:8.0f} {util:>7s} {equivalent:>13s} {ratio:>10s}")
    json.dump({"tok_s": med, "peak_flops": statistics.median(peaks)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
