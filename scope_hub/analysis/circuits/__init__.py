"""Attribution graphs over transcoders and CLTs ("Circuit Tracing", Ameisen et al., 2025).

Public API::

    graph = attribute(prompt, model, transcoders, tokenizer=tok)   # Graph (unpruned)
    result = prune(graph, node_threshold=0.8, edge_threshold=0.98)
    write_graph_json(graph, "out/graph.json", prune_result=result)  # circuit-tracer / Neuronpedia format
    write_html(graph, "out/graph.html", prune_result=result)        # self-contained viewer
    report = check_interventions(graph, model, transcoders, nodes)  # real-model check of predictions
    transcoders = quick_transcoders(model, tok)                     # rough ones, fitted in seconds, to try it

Every public name is a function or class, never a submodule: no submodule shares a public
name (``pruning`` holds ``prune``; tests/analysis/circuits/test_public_api.py checks), since
importing a submodule binds it on the package under its own name.

Example:
    >>> from scope_hub.analysis.circuits import prune, PruneResult
    >>> callable(prune), prune.__module__
    (True, 'scope_hub.analysis.circuits.pruning')

See docs/circuits.md.
"""

from __future__ import annotations

from scope_hub.lazy_imports import lazy_attributes

_LAZY = {
    "attribute": "scope_hub.analysis.circuits.attribution",
    "Graph": "scope_hub.analysis.circuits.graph",
    "prune": "scope_hub.analysis.circuits.pruning",
    "quick_transcoders": "scope_hub.analysis.circuits.quick",
    "PruneResult": "scope_hub.analysis.circuits.pruning",
    "node_influence": "scope_hub.analysis.circuits.pruning",
    "graph_scores": "scope_hub.analysis.circuits.pruning",
    "graph_json": "scope_hub.analysis.circuits.export",
    "write_graph_json": "scope_hub.analysis.circuits.export",
    "write_html": "scope_hub.analysis.circuits.html",
    "check_interventions": "scope_hub.analysis.circuits.interventions",
    "InterventionResult": "scope_hub.analysis.circuits.interventions",
    "predict": "scope_hub.analysis.circuits.interventions",
    "top_features": "scope_hub.analysis.circuits.interventions",
    "total_effects": "scope_hub.analysis.circuits.interventions",
    "TranscoderSet": "scope_hub.analysis.circuits.transcoder_set",
}

__getattr__, __dir__, __all__ = lazy_attributes(__name__, _LAZY)
