"""circuit-tracer 0.5 against scope-hub: the same graph JSON, and ``attribute()`` time and peak memory side by side.

circuit-tracer 0.5.0 pins transformers < 5, so it runs in its own venv (``--ct-python``; built
once with ``--setup`` under ``/tmp/ct-venv``: PyPI downloads of torch, the same version as
ours, then circuit-tracer). Two parts (``--only json attribution``; both by default):

``json``: the first half (scope-hub's venv) builds an attribution graph on the tiny Gemma 3 of the
tests with random transcoders, prunes it and writes our viewer JSON; it also saves the graph as
plain tensors (dense N x N adjacency, features, activations, logits) and the tokenizer. The
second half (circuit-tracer's venv, a subprocess, no scope-hub import) rebuilds circuit-tracer's
``Graph`` from those tensors, runs its ``create_graph_files`` (``prune_graph`` + node/link JSON)
with the same thresholds, and compares: the same node ids and fields, the same links and weights,
the same metadata (except ``scan``, which circuit-tracer derives from Python's salted ``hash()``
for several dictionaries). Error nodes are compared under circuit-tracer's ids (ours differ on
purpose: see ``scope_hub.analysis.circuits.export.error_node_id``).

``attribution``: ``scope_hub.analysis.circuits.attribute`` against circuit-tracer's ``attribute``
(nnsight backend: the HF model itself, no TransformerLens port) on the same prompt (16, 64, 256
tokens), model (``--model tiny``: the tests' tiny Gemma 3, 3 layers, d_model 64; ``gemma-3-270m``:
the real model) and random JumpReLU transcoders at every layer, the same feature-row budget,
batch size and logit targets; each side in its own fresh process; the graphs must agree (nodes and
every edge weight) before any ratio is reported (:mod:`benchmarks.attribution_timing`).
Exit status 0 when everything agrees.

    .venv/bin/python benchmarks/circuits_vs_circuit_tracer.py --setup          # builds /tmp/ct-venv once
    .venv/bin/python benchmarks/circuits_vs_circuit_tracer.py --only attribution --model gemma-3-270m
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import attribution_timing as timing  # noqa: E402
from benchmarks.device import add_device_argument, resolve_device  # noqa: E402
from benchmarks.summary import Headline, add_summary_argument, write_summary  # noqa: E402

CT_VENV = Path(tempfile.gettempdir()) / "ct-venv"
"""Where ``--setup`` builds circuit-tracer's venv (the folder the interop cross-check uses too)."""
CT_VERSION = "0.5.0"
PARTS = ("json", "attribution")
"""What ``--only`` can pick."""
THRESHOLDS = [(0.8, 0.98), (0.6, 0.9), (0.95, 0.995)]

CT_HALF = r"""
import json, sys, torch
from pathlib import Path
from circuit_tracer.attribution.targets import LogitTarget
from circuit_tracer.graph import Graph
from circuit_tracer.utils.create_graph_files import create_graph_files
from circuit_tracer.utils.tl_nnsight_mapping import UnifiedConfig

work = Path(sys.argv[1])
b = torch.load(work / "bundle.pt", weights_only=True)
cfg = UnifiedConfig(n_layers=b["n_layers"], d_model=64, d_head=24, n_heads=4, d_mlp=128, d_vocab=260,
                    tokenizer_name=str(work / "tokenizer"), model_name="tiny-gemma3",
                    original_architecture="Gemma3ForCausalLM")
graph = Graph(input_string=b["prompt"], input_tokens=b["input_ids"], active_features=b["features"],
              adjacency_matrix=b["adjacency"], cfg=cfg, selected_features=torch.arange(b["features"].shape[0]),
              activation_values=b["activations"],
              logit_targets=[LogitTarget(t, int(i)) for t, i in zip(b["logit_labels"], b["logit_ids"].tolist())],
              logit_probabilities=b["logit_probs"], scan="tiny-scan", vocab_size=260)
for nt, et in b["thresholds"]:
    out = work / f"ct_{nt}_{et}"
    create_graph_files(graph, slug="g", output_path=str(out), scan="tiny-scan", node_threshold=nt, edge_threshold=et)
print("ok")
"""


def scope_half(work: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from scope_hub.analysis.circuits.attribution import attribute
    from scope_hub.analysis.circuits.export import graph_json
    from scope_hub.analysis.circuits.pruning import prune
    from scope_hub.testing.tiny_models import tiny_model, tiny_tokenizer
    from tests.analysis.circuits.helpers import dictionaries

    tok = tiny_tokenizer()
    tok.save_pretrained(work / "tokenizer")
    config_path = work / "tokenizer" / "tokenizer_config.json"  # transformers 4.x lacks 5.x's class name
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    ids = tok("The cat sat on the", return_tensors="pt").input_ids[0]
    graph = attribute(
        ids,
        tiny_model("gemma3"),
        dictionaries("transcoder", "jumprelu", dtype=torch.float32),
        tokenizer=tok,
        max_feature_nodes=None,
        max_n_logits=4,
    )
    dense = torch.zeros(graph.n_nodes, graph.n_nodes)
    dense[graph.row_nodes] = graph.rows.float()
    torch.save(
        {
            "n_layers": graph.n_layers,
            "prompt": graph.prompt,
            "input_ids": graph.input_ids,
            "features": graph.features,
            "activations": graph.activations.float(),
            "adjacency": dense,
            "logit_ids": graph.logit_ids,
            "logit_probs": graph.logit_probs.float(),
            "logit_labels": graph.logit_labels,
            "thresholds": THRESHOLDS,
        },
        work / "bundle.pt",
    )
    graph.dictionaries = ["tiny-scan"]
    graph.rows = dense[graph.row_nodes]  # the same float32 numbers circuit-tracer sees
    for nt, et in THRESHOLDS:
        data = graph_json(graph, prune(graph, nt, et), slug="g")
        (work / f"ours_{nt}_{et}.json").write_text(json.dumps(data))


def in_circuit_tracer_ids(data: dict) -> dict:
    """Our JSON with error nodes renamed to circuit-tracer's ids (``0_{layer}_{pos}``, jsNodeId ``{layer}_{pos}-0``).

    Ours are unique (``{layer}_-1_{pos}``); circuit-tracer's collide with layer-0 features, so the
    comparison is made in its naming, where everything else must agree exactly.
    """
    from scope_hub.analysis.circuits.export import circuit_tracer_error_id

    rename = {}
    for node in data["nodes"]:
        if node["feature_type"] == "mlp reconstruction error":
            rename[node["node_id"]] = node["node_id"] = circuit_tracer_error_id(node["node_id"])
            node["jsNodeId"] = f"{node['layer']}_{node['ctx_idx']}-0"
    for link in data["links"]:
        link["source"], link["target"] = (
            rename.get(link["source"], link["source"]),
            rename.get(link["target"], link["target"]),
        )
    return data


def compare(work: Path) -> list[str]:
    problems = []
    for nt, et in THRESHOLDS:
        ours = in_circuit_tracer_ids(json.loads((work / f"ours_{nt}_{et}.json").read_text()))
        theirs = json.loads((work / f"ct_{nt}_{et}" / "g.json").read_text())
        tag = f"thresholds ({nt}, {et})"
        if ours["metadata"] != theirs["metadata"]:
            problems.append(f"{tag}: metadata differ: {ours['metadata']} vs {theirs['metadata']}")
        if ours["qParams"] != theirs["qParams"]:
            problems.append(f"{tag}: qParams differ")
        a = {n["node_id"]: n for n in ours["nodes"]}
        b = {n["node_id"]: n for n in theirs["nodes"]}
        if set(a) != set(b):
            problems.append(
                f"{tag}: nodes differ: only ours {sorted(set(a) - set(b))[:5]}, "
                f"only theirs {sorted(set(b) - set(a))[:5]}"
            )
        for node_id in set(a) & set(b):
            for field, value in b[node_id].items():
                mine = a[node_id][field]
                same = (
                    abs(mine - value) <= 1e-5 * max(1.0, abs(value))
                    if isinstance(value, float) and isinstance(mine, float)
                    else mine == value
                )
                if not same:
                    problems.append(f"{tag}: node {node_id} field {field}: {mine!r} vs {value!r}")
        la = {(x["source"], x["target"]): x["weight"] for x in ours["links"]}
        lb = {(x["source"], x["target"]): x["weight"] for x in theirs["links"]}
        if set(la) != set(lb):
            problems.append(f"{tag}: links differ ({len(la)} vs {len(lb)}; {len(set(la) ^ set(lb))} not shared)")
        elif any(abs(la[k] - lb[k]) > 1e-6 * max(1.0, abs(lb[k])) for k in la):
            problems.append(f"{tag}: link weights differ")
        print(f"{tag}: {len(a)} nodes, {len(la)} links; circuit-tracer {len(b)} nodes, {len(lb)} links")
    return problems


def ensure_ct_venv(venv: Path) -> Path:
    """circuit-tracer's venv: built once (torch first, our version, so its CPU/GPU build is kept)."""
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    import torch

    torch_version = torch.__version__.split("+")[0]
    print(f"building {venv}: torch=={torch_version}, circuit-tracer=={CT_VERSION} (PyPI downloads)", flush=True)
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(partial)], check=True)
    pip = [str(partial / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"torch=={torch_version}"], check=True)
    # nnsight 0.8 moved the tracing module circuit-tracer 0.5 imports (nnsight.intervention.tracing).
    subprocess.run([*pip, f"circuit-tracer=={CT_VERSION}", "nnsight>=0.6,<0.7"], check=True)
    partial.rename(venv)  # only a complete venv gets the name the next run looks for
    return python


def json_part(ct_python: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scope_half(work)
        subprocess.run([ct_python, "-c", CT_HALF, str(work)], check=True, cwd=tmp)
        problems = compare(work)
    for problem in problems[:20]:
        print("MISMATCH", problem)
    print("all agree" if not problems else f"{len(problems)} mismatches")
    return len(problems)


def attribution_part(args: argparse.Namespace, ct_python: str) -> tuple[int, list[Headline]]:
    """Both sides per length, each in a fresh process; a ratio only where the graphs agree."""
    rows: list[Headline] = []
    failures = 0
    with tempfile.TemporaryDirectory(prefix="scope-hub-attribution-vs-ct-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        info = timing.prepare(work, args.model, args.lengths, args.d_sae, args.l0)
        print(
            f"\nattribute() vs circuit-tracer {CT_VERSION} attribute (nnsight backend), {args.model} "
            f"({info['n_layers']} layers, d_model {info['d_model']}), random JumpReLU transcoders d_sae {args.d_sae} "
            f"(~{args.l0} active per token) at every layer, {args.feature_rows or 'all'} feature rows, batch {args.batch}, "
            f"device {args.device}, {args.threads or 'default'} torch threads, load average {os.getloadavg()[0]:.1f}"
        )
        header = (
            "| tokens | active features | ours s | circuit-tracer s | ct / ours (time) | ours CPU s | ct CPU s | "
            "ct / ours (CPU) | ours peak MiB | ct peak MiB | "
            "ours / ct (peak) | ours build MiB | ct build MiB | max edge diff (rel.) |"
        )
        print(header + "\n|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|", flush=True)
        for length in args.lengths:
            common = [str(length), str(args.feature_rows), str(args.batch), args.device, str(args.threads)]
            ours = timing.run_side([sys.executable, __file__, "--child", str(work), *common])
            theirs = timing.run_side([ct_python, "-c", timing.CT_CHILD, str(work), *common])
            if theirs["model_max_abs_logit_diff"] > 1e-3:
                raise SystemExit(f"circuit-tracer's model differs from ours: {theirs['model_max_abs_logit_diff']:.3g}")
            problems = timing.compare_graphs(work, length)
            if problems:
                failures += 1
                print(f"| {length} | graphs differ: {'; '.join(problems)} |", flush=True)
                continue
            speed = theirs["wall_s"] / ours["wall_s"]
            memory = ours["peak_mib"] / theirs["peak_mib"]
            built = (ours["peak_mib"] - ours["loaded_mib"], theirs["peak_mib"] - theirs["loaded_mib"])
            print(
                f"| {length} | {ours['n_features']} | {ours['wall_s']:.2f} | {theirs['wall_s']:.2f} | {speed:.2f}x | "
                f"{ours['cpu_s']:.1f} | {theirs['cpu_s']:.1f} | {theirs['cpu_s'] / ours['cpu_s']:.2f}x | "
                f"{ours['peak_mib']:.0f} | {theirs['peak_mib']:.0f} | {memory:.2f} | {built[0]:.0f} | {built[1]:.0f} | "
                f"{timing.max_edge_error(work, length):.1e} |",
                flush=True,
            )
            note = f"{args.model}, {args.feature_rows or 'all'} feature rows, batch {args.batch}; same graph"
            rows += [
                Headline(
                    "attribution",
                    f"circuit-tracer / ours, attribute() at {length} tokens (time)",
                    speed,
                    goal=">= 2",
                    note=f"{theirs['wall_s']:.2f} vs {ours['wall_s']:.2f} s wall; CPU {theirs['cpu_s']:.1f} vs "
                    f"{ours['cpu_s']:.1f} s ({theirs['cpu_s'] / ours['cpu_s']:.2f}x); {note}",
                ),
                Headline(
                    "attribution",
                    f"circuit-tracer / ours, attribute() at {length} tokens (CPU time)",
                    theirs["cpu_s"] / ours["cpu_s"],
                    note="user + system seconds of each build: less sensitive to other jobs than wall time",
                ),
                Headline(
                    "attribution",
                    f"ours / circuit-tracer, peak memory at {length} tokens",
                    memory,
                    goal="<= 1",
                    note=f"{ours['peak_mib']:.0f} vs {theirs['peak_mib']:.0f} MiB process peak; the build alone "
                    f"{built[0]:.0f} vs {built[1]:.0f} MiB",
                ),
            ]
    return failures, rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ct-python", default=None, help=f"python of a venv with circuit-tracer=={CT_VERSION} (default: {CT_VENV})"
    )
    parser.add_argument("--setup", action="store_true", help=f"build circuit-tracer's venv under {CT_VENV} if missing")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run")
    parser.add_argument("--model", choices=["tiny", "gemma-3-270m"], default="tiny", help="attribution: the model")
    parser.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="attribution: prompt lengths")
    parser.add_argument(
        "--feature-rows",
        type=int,
        default=0,
        help="attribution: feature rows (max_feature_nodes); 0: every active feature, so no near-tie in the "
        "influence order can make the two sides pick different rows",
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="attribution: prompt copies per backward pass, both sides"
    )
    parser.add_argument("--d-sae", type=int, default=256, help="attribution: latents per transcoder")
    parser.add_argument("--l0", type=int, default=8, help="attribution: active latents per token per layer")
    parser.add_argument(
        "--threads", type=int, default=0, help="attribution: torch threads on both sides (0: torch's choice)"
    )
    parser.add_argument(
        "--workdir", help="attribution: keep the model, transcoders and graphs here (default: temporary)"
    )
    add_device_argument(parser)
    add_summary_argument(parser)
    parser.add_argument("--child", metavar="WORK", help=argparse.SUPPRESS)  # our side of one length
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_device(args.device)
    if args.child:
        length, rows, batch, device, threads = args.child_args
        print(json.dumps(timing.ours_child(Path(args.child), int(length), int(rows), int(batch), device, int(threads))))
        return 0
    ct_python = args.ct_python or str(ensure_ct_venv(CT_VENV) if args.setup else CT_VENV / "bin" / "python")
    if not Path(ct_python).is_file():
        raise SystemExit(f"{ct_python} does not exist: run once with --setup (builds {CT_VENV}) or pass --ct-python")
    failures, rows = 0, []
    if "json" in args.only:
        failures += json_part(ct_python)
    if "attribution" in args.only:
        failed, rows = attribution_part(args, ct_python)
        failures += failed
    write_summary(args.summary, rows)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
