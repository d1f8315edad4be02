"""Pruned graphs as the JSON that circuit-tracer's and Neuronpedia's graph viewers read.

Format (confirmed against circuit-tracer 0.5.0: ``frontend/graph_models.py`` and
``utils/create_graph_files.py``, and the fields its ``attribution_graph/util-cg.js`` reads)::

    {"metadata": {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt",
                  "node_threshold", "schema_version": 1},
     "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
     "nodes": [{"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob",
                "is_target_logit", "run_idx", "reverse_ctx_idx", "jsNodeId", "clerp",
                "influence", "activation"}, ...],
     "links": [{"source": node_id, "target": node_id, "weight": float}, ...]}

Node ids: feature ``{layer}_{index}_{pos}``, error ``{layer}_-1_{pos}``, token
``E_{token id}_{pos}``, logit ``{n_layers + 1}_{token id}_{last pos}``; a feature's
``feature`` field is the Cantor pairing of (layer, index); ``feature_type`` is
``cross layer transcoder`` | ``mlp reconstruction error`` | ``embedding`` | ``logit``
(circuit-tracer writes ``cross layer transcoder`` for per-layer transcoders too);
``influence`` is the node's cumulative influence rank. Like circuit-tracer, only
nodes touched by a kept link are written, plus every token and logit node. Two
deviations: error node ids (circuit-tracer's ``0_{layer}_{pos}`` collides with the layer-0
feature of index ``layer``; see :func:`error_node_id`; ``jsNodeId`` likewise
``{layer}_-1-{pos}`` instead of ``{layer}_{pos}-0``), and for several dictionaries ``scan`` is
``custom-`` + a sha256 prefix (circuit-tracer uses Python's per-process salted ``hash()``, not
reproducible).
``graph-metadata.json`` (the viewer's index of graphs) is updated next to the file.

Example:
    >>> import json, tempfile, torch
    >>> from scope_hub.testing.tiny_models import tiny_gemma3
    >>> from scope_hub.testing.dictionaries import make_config, make_dictionary
    >>> from scope_hub.analysis.circuits.attribution import attribute
    >>> tcs = [make_dictionary(make_config("transcoder", "relu", d_in=64, d_out=64, d_sae=8, site="mlp_in",
    ...        site_out="mlp_out", layer=L)) for L in range(3)]
    >>> graph = attribute(torch.tensor([257, 104, 105, 33]), tiny_gemma3(), tcs, max_n_logits=1)
    >>> path = write_graph_json(graph, tempfile.mkdtemp() + "/hi.json")
    >>> data = json.loads(path.read_text())
    >>> sorted(data), data["nodes"][-1]["feature_type"]
    (['links', 'metadata', 'nodes', 'qParams'], 'logit')
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from scope_hub.analysis.circuits.graph import Graph
from scope_hub.analysis.circuits.pruning import PruneResult, prune
from scope_hub.atomic_files import atomic_write_text

SCHEMA_VERSION = 1
METADATA_FILE = "graph-metadata.json"


def cantor(x: int, y: int) -> int:
    """Cantor pairing, circuit-tracer's unique integer for a (layer, feature index) pair."""
    return (x + y) * (x + y + 1) // 2 + y


def slugify(text: str, limit: int = 48) -> str:
    """A file-name-safe slug (circuit-tracer names the JSON ``{slug}.json``)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "graph"


def scan_id(names: list[str]) -> tuple[str, list[str]]:
    """(``scan``, ``transcoder_list``): one name as is; several as ``custom-<sha256[:16]>`` plus the list."""
    if len(names) == 1:
        return names[0], []
    return "custom-" + hashlib.sha256("-".join(names).encode()).hexdigest()[:16], list(names)


ERROR_FEATURE = -1
"""The ``feature`` field of an error node (circuit-tracer's and the viewer's value)."""


def error_node_id(layer: int, pos: int) -> str:
    """``{layer}_-1_{pos}``: the viewer's own key for an error node (``{layer}_{feature}_{ctx_idx}``).

    circuit-tracer writes ``0_{layer}_{pos}``, which is also the id of the layer-0 feature whose
    index equals ``layer`` at ``pos``; feature indices are never negative, so this form is unique.

    Example:
        >>> error_node_id(1, 2), circuit_tracer_error_id(error_node_id(1, 2))
        ('1_-1_2', '0_1_2')
    """
    return f"{layer}_{ERROR_FEATURE}_{pos}"


def circuit_tracer_error_id(node_id: str) -> str:
    """The id circuit-tracer's ``create_graph_files`` gives the error node ``node_id`` (for cross-checks)."""
    layer, _, pos = node_id.split("_")
    return f"0_{layer}_{pos}"


def node_record(graph: Graph, node: int, cumulative: float) -> dict[str, Any]:
    """The viewer's record of one node."""
    kind = graph.node_kind(node)
    if kind == "feature":
        layer, pos, index = graph.features[node].tolist()
        return _node(
            f"{layer}_{index}_{pos}",
            cantor(layer, index),
            str(layer),
            pos,
            "cross layer transcoder",
            f"{layer}_{index}-0",
            influence=cumulative,
            activation=float(graph.activations[node]),
        )
    if kind == "error":
        layer, pos = divmod(node - graph.error_offset, graph.n_pos)
        return _node(
            error_node_id(layer, pos),
            ERROR_FEATURE,
            str(layer),
            pos,
            "mlp reconstruction error",
            f"{layer}_{ERROR_FEATURE}-{pos}",
            influence=cumulative,
        )
    if kind == "token":
        pos = node - graph.token_offset
        vocab = int(graph.input_ids[pos])
        return _node(f"E_{vocab}_{pos}", pos, "E", pos, "embedding", f"E_{vocab}-{pos}", influence=cumulative)
    k = node - graph.logit_offset
    vocab, prob, layer, pos = (
        int(graph.logit_ids[k]),
        float(graph.logit_probs[k]),
        str(graph.n_layers + 1),
        graph.n_pos - 1,
    )
    return _node(
        f"{layer}_{vocab}_{pos}",
        vocab,
        layer,
        pos,
        "logit",
        f"L_{vocab}-{pos}",
        token_prob=prob,
        is_target_logit=k == 0,
        clerp=f'Output "{graph.logit_labels[k]}" (p={prob:.3f})',
    )


def _node(
    node_id: str,
    feature: int,
    layer: str,
    ctx_idx: int,
    feature_type: str,
    js_id: str,
    *,
    influence: float | None = None,
    activation: float | None = None,
    token_prob: float = 0.0,
    is_target_logit: bool = False,
    clerp: str = "",
) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": ctx_idx,
        "feature_type": feature_type,
        "token_prob": token_prob,
        "is_target_logit": is_target_logit,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": js_id,
        "clerp": clerp,
        "influence": influence,
        "activation": activation,
    }


def graph_json(
    graph: Graph,
    prune_result: PruneResult | None = None,
    *,
    slug: str | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> dict[str, Any]:
    """The viewer JSON of ``graph`` pruned with ``prune_result`` (or pruned here with the thresholds)."""
    result = prune_result or prune(graph, node_threshold, edge_threshold)
    kept = result.node_mask.nonzero(as_tuple=True)[0].tolist()
    nodes = {n: node_record(graph, n, float(result.cumulative_scores[n])) for n in kept}
    r, s = result.edge_mask.nonzero(as_tuple=True)
    links = []
    for row, source in zip(r.tolist(), s.tolist()):
        target = int(graph.row_nodes[row])
        if source in nodes and target in nodes:
            links.append(
                {
                    "source": nodes[source]["node_id"],
                    "target": nodes[target]["node_id"],
                    "weight": float(graph.rows[row, source]),
                }
            )
    touched = {link["source"] for link in links} | {link["target"] for link in links}
    used = [rec for rec in nodes.values() if rec["node_id"] in touched or rec["feature_type"] in ("embedding", "logit")]
    scan, transcoder_list = scan_id(graph.dictionaries or ["unknown"])
    metadata = {
        "slug": slug or slugify(graph.prompt),
        "scan": scan,
        "transcoder_list": transcoder_list,
        "prompt_tokens": list(graph.tokens),
        "prompt": graph.prompt,
        "node_threshold": result.node_threshold,
        "schema_version": SCHEMA_VERSION,
    }
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": metadata, "qParams": qparams, "nodes": used, "links": links}


def write_graph_json(
    graph: Graph,
    path: str | Path,
    prune_result: PruneResult | None = None,
    *,
    slug: str | None = None,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
    update_metadata: bool = True,
) -> Path:
    """Write the viewer JSON to ``path`` (atomically); also update ``graph-metadata.json`` beside it."""
    path = Path(path)
    data = graph_json(
        graph, prune_result, slug=slug or path.stem, node_threshold=node_threshold, edge_threshold=edge_threshold
    )
    atomic_write_text(path, json.dumps(data, indent=1))
    if update_metadata:
        index_path = path.parent / METADATA_FILE
        index = json.loads(index_path.read_text()) if index_path.is_file() else {"graphs": []}
        index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != data["metadata"]["slug"]]
        index["graphs"].append(data["metadata"])
        atomic_write_text(index_path, json.dumps(index, indent=2))
    return path
