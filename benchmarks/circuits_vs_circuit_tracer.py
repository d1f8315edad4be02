"""Check scope-hub's pruning and graph JSON against circuit-tracer's own code (outside the test suite).

circuit-tracer 0.5.0 pins transformers < 5, so it runs in its own venv. The first half (scope-hub's
venv) builds an attribution graph on the tiny Gemma 3 of the tests with random transcoders,
prunes it and writes our viewer JSON; it also saves the graph as plain tensors (dense N x N
adjacency, features, activations, logits) and the tokenizer. The second half (circuit-tracer's
venv, a subprocess, no scope-hub import) rebuilds circuit-tracer's ``Graph`` from those tensors,
runs its ``create_graph_files`` (``prune_graph`` + node/link JSON) with the same thresholds, and
compares: the same node ids and fields, the same links and weights, the same metadata (except
``scan``, which circuit-tracer derives from Python's salted ``hash()`` for several dictionaries).
Error nodes are compared under circuit-tracer's ids (ours differ on purpose: see
``scope_hub.analysis.circuits.export.error_node_id``).
Exit status 0 when everything agrees.

Set up once (shared with benchmarks/interop_circuit_tracer.py), then run::

    python3 -m venv /tmp/ct-venv
    /tmp/ct-venv/bin/pip install torch==2.13.0          # first, so the CPU wheel is kept
    /tmp/ct-venv/bin/pip install circuit-tracer==0.5.0
    .venv/bin/python benchmarks/circuits_vs_circuit_tracer.py --ct-python /tmp/ct-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct-python", required=True, help="python of a venv with circuit-tracer==0.5.0")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scope_half(work)
        subprocess.run([args.ct_python, "-c", CT_HALF, str(work)], check=True, cwd=tmp)
        problems = compare(work)
    for problem in problems[:20]:
        print("MISMATCH", problem)
    print("all agree" if not problems else f"{len(problems)} mismatches")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
