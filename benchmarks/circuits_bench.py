"""Circuit tracing: attribution-graph build time and peak memory vs prompt length.

Real Gemma 3 270M (fp32, 2 CPU threads) with small quick-fitted JumpReLU transcoders at all 18
layers (d_sae 256, ~12 active per token; fitted once and cached, see
scope_hub/analysis/circuits/quick.py). For each prompt length (a prefix of a fixed
English text, BOS included) one graph is built with ``max_feature_nodes`` feature rows chosen
by influence (circuit-tracer's greedy order), then pruned.

Each length runs in a fresh subprocess so that its peak RSS (``ru_maxrss``) is its own; the
model alone (loaded, one forward) is measured the same way as a baseline. Reported per length:
active features, feature rows, batch (prompt copies per backward pass), time of the record +
replay forward, of the backward passes (with edge contraction), total wall and CPU (user + sys:
less sensitive to other load on the machine), ms per row (backward wall / rows), peak RSS,
the rows buffer, the completeness error (max |residual| / max |value|), and the 1-minute load
average when the build started (2 cores: above ~2 means other processes took CPU).

Usage::

    .venv/bin/python benchmarks/circuits_bench.py                     # 16 64 128 256 tokens, 1024 rows
    .venv/bin/python benchmarks/circuits_bench.py --lengths 16 64 --feature-rows 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.device import add_device_argument, resolve_device  # noqa: E402

DEFAULT_CACHE = Path(tempfile.gettempdir()) / "scope_hub_circuits_bench"


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load(cache: Path):
    import torch

    from scope_hub.analysis.circuits.quick import fit_transcoder, harvest
    from scope_hub.gguf_models import gemma3_270m_path, load_causal_lm

    torch.set_num_threads(2)
    model, tok = load_causal_lm(gemma3_270m_path(progress=False))
    folders = [cache / f"layer_{L}" for L in range(model.config.num_hidden_layers)]
    if not all((f / "config.json").is_file() for f in folders):
        for layer, (x, y) in harvest(model, tok).items():
            fit_transcoder(x, y, layer, d_sae=256, l0=12, model_id="google/gemma-3-270m").save_pretrained(
                folders[layer]
            )
    return model, tok, [str(f) for f in folders]


def child(length: int, feature_rows: int, cache: Path, device_name: str = "cpu") -> dict:
    """One measurement in this (fresh) process; prints nothing, returns a JSON-able dict.

    On a GPU the peak is ``torch.cuda.max_memory_allocated`` and clocks are read after a synchronize.
    """
    import torch

    from benchmarks.device import peak_mib, synchronize
    from scope_hub.analysis.circuits.attribution import attribute
    from scope_hub.analysis.circuits.pruning import prune
    from scope_hub.analysis.circuits.quick import TEXT

    device = torch.device(device_name)
    model, tok, folders = _load(cache)
    model.to(device)
    ids = tok(TEXT, return_tensors="pt").input_ids[0][:length].to(device)
    if length == 0:  # baseline: the model and one plain forward
        with torch.no_grad():
            model(
                input_ids=tok(TEXT, return_tensors="pt").input_ids[:, :256].to(device),
                use_cache=False,
                logits_to_keep=1,
            )
        return {"peak_rss_mib": peak_mib(device)}
    load_avg = os.getloadavg()[0]
    synchronize(device)
    cpu0, started = _cpu_s(), time.perf_counter()
    graph = attribute(ids, model, folders, tokenizer=tok, max_feature_nodes=feature_rows)
    synchronize(device)
    build, cpu = time.perf_counter() - started, _cpu_s() - cpu0
    result = prune(graph)
    info = graph.info
    rows = len(graph.row_nodes)
    return {
        "tokens": int(ids.numel()),
        "active_features": graph.n_features,
        "feature_rows": rows - graph.n_logits,
        "logits": graph.n_logits,
        "batch": info["batch_size"],
        "backward_passes": info["n_backward"],
        "forward_s": info["record_s"] + info["replay_forward_s"],
        "backward_s": info["backward_s"],
        "total_s": build,
        "cpu_s": cpu,
        "ms_per_row": 1000 * info["backward_s"] / rows,
        "peak_rss_mib": peak_mib(device),
        "rows_mib": info["rows_mib"],
        "completeness_rel": graph.relative_completeness_error(),
        "kept_nodes": int(result.node_mask.sum()),
        "kept_links": result.n_edges(),
        "kept_influence": result.kept_influence(graph),
        "load_avg_1min": load_avg,
    }


def _spawn(length: int, feature_rows: int, cache: Path, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(length), "--feature-rows", str(feature_rows), "--cache", str(cache)]
    cmd += ["--device", device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


PARTS = (16, 64, 128, 256)
"""What ``--only`` can pick: prompt lengths (the same as ``--lengths``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(PARTS))
    parser.add_argument(
        "--only", type=int, nargs="+", choices=PARTS, default=None, help="lengths (wins over --lengths)"
    )
    parser.add_argument("--feature-rows", type=int, default=1024)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the quick transcoders are cached")
    add_device_argument(parser)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_device(args.device)
    args.lengths = args.only or args.lengths
    if args.child is not None:
        print(json.dumps(child(args.child, args.feature_rows, args.cache, args.device)))
        return 0
    _spawn(0, args.feature_rows, args.cache, args.device)  # fits and caches the transcoders once
    baseline = _spawn(0, args.feature_rows, args.cache, args.device)["peak_rss_mib"]
    print(f"model baseline peak RSS: {baseline:.0f} MiB (Gemma 3 270M fp32 loaded + one 256-token forward)")
    header = (
        "| tokens | active features | feature rows | batch | backward passes | forward s | backward s | "
        "total s | CPU s | ms/row | peak RSS MiB | over baseline MiB | rows MiB | completeness rel. err | load avg |"
    )
    print(header)
    print("|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|")
    for length in args.lengths:
        r = _spawn(length, args.feature_rows, args.cache, args.device)
        print(
            f"| {r['tokens']} | {r['active_features']} | {r['feature_rows']} | {r['batch']} | {r['backward_passes']} | "
            f"{r['forward_s']:.1f} | {r['backward_s']:.1f} | {r['total_s']:.1f} | {r['cpu_s']:.0f} | "
            f"{r['ms_per_row']:.0f} | "
            f"{r['peak_rss_mib']:.0f} | {r['peak_rss_mib'] - baseline:.0f} | {r['rows_mib']:.0f} | "
            f"{r['completeness_rel']:.1e} | {r['load_avg_1min']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
