"""``scope-hub trace "PROMPT" --model PATH --transcoders KEY-PATTERN|FOLDER... --out graph.json``.

Builds the attribution graph of the prompt's next-token prediction, prunes it,
and writes the circuit-tracer/Neuronpedia JSON (plus ``graph-metadata.json``
beside it), optionally a self-contained HTML view and the raw unpruned graph.

``--transcoders`` takes, in any mix: dictionary folders; a folder of
dictionary folders (e.g. one per layer); registry keys; or fnmatch patterns over
registry keys (``'google/gemma-3-270m:mlp/layer_*/width_16k/transcoder/l0_small'``),
resolved against the global ``--registry``. ``--target`` tokens are matched exactly,
leading space included (``' Paris'``, not ``'Paris'``); a target the model gives
less than ``LOW_TARGET_PROB`` gets a warning naming a likelier spelling.

Nothing heavy is imported until the command runs (the CLI seam's rule).

Example:
    >>> import argparse
    >>> run = setup(argparse.ArgumentParser(prog="scope-hub trace"))
    >>> callable(run)
    True
    >>> layer_ranges([0, 1, 2, 3, 4, 6, 7, 9])
    '0-4,6-7,9'
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Runner = Callable[[argparse.Namespace], int]
_GLOB = set("*?[")
LOW_TARGET_PROB = 1e-3
"""Below this probability a ``--target`` is probably misspelt (most often: a missing leading space)."""


def setup(parser: argparse.ArgumentParser) -> Runner:
    """Add ``trace``'s arguments to ``parser`` and return its runner."""
    parser.add_argument("prompt", metavar="PROMPT", help="text whose next-token prediction is explained")
    parser.add_argument(
        "--model",
        required=True,
        metavar="PATH",
        help="transformers causal LM folder, Hub id, or gemma-3-270m (converted offline)",
    )
    parser.add_argument(
        "--transcoders",
        required=True,
        nargs="+",
        metavar="KEY-PATTERN|FOLDER",
        help="dictionary folders, a folder of them, registry keys or fnmatch key patterns",
    )
    parser.add_argument("--out", required=True, metavar="FILE.json", help="where the graph JSON goes")
    parser.add_argument("--html", metavar="FILE.html", help="also write a self-contained HTML view")
    parser.add_argument("--save-graph", metavar="FILE.pt", help="also save the unpruned graph (Graph.load reads it)")
    parser.add_argument("--node-threshold", type=float, default=0.8, help="influence kept by node pruning (0.8)")
    parser.add_argument("--edge-threshold", type=float, default=0.98, help="influence kept by edge pruning (0.98)")
    parser.add_argument(
        "--max-feature-nodes",
        type=int,
        default=2048,
        help="feature rows to compute, most influential first (default 2048; 0: all)",
    )
    parser.add_argument("--max-logits", type=int, default=10, help="at most this many logit nodes (10)")
    parser.add_argument(
        "--target",
        action="append",
        metavar="TOKEN",
        help="explain this token's logit (repeatable); matched exactly, leading space included: "
        "--target ' Paris' for the word after 'is', not 'Paris'",
    )
    parser.add_argument("--batch-size", type=int, help="prompt copies per backward pass (default: from memory)")
    parser.add_argument("--dtype", choices=("float32", "float64", "bfloat16"), default="float32")
    parser.add_argument("--slug", help="graph name in the viewer (default: the output file's stem)")
    parser.add_argument("--keep-bos", action="store_true", help="keep feature/error nodes at a leading BOS")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")

    def run(args: argparse.Namespace) -> int:
        return _run(args)

    return run


def resolve_sources(items: list[str], registry: Any) -> list[str]:
    """Folders and registry keys from ``--transcoders`` arguments (patterns expanded, sorted)."""
    from scope_hub.errors import ConfigError

    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            if (path / "config.json").is_file():
                out.append(str(path))
                continue
            children = sorted(p for p in path.iterdir() if (p / "config.json").is_file())
            if not children:
                raise ConfigError(f"{path}: neither a dictionary folder nor a folder of them (no config.json)")
            out += [str(p) for p in children]
        elif _GLOB & set(item):
            from scope_hub.registry import Registry

            keys = sorted(s.key for s in Registry(registry).list(item) if s.latest is not None)
            if not keys:
                raise ConfigError(f"no registry key matches {item!r} in {Registry(registry).url}")
            out += keys
        else:
            out.append(item)  # a key (with optional @ref); loading reports a bad one
    return out


def _run(args: argparse.Namespace) -> int:
    import torch

    from scope_hub.analysis.circuits.attribution import attribute
    from scope_hub.analysis.circuits.export import write_graph_json
    from scope_hub.analysis.circuits.html import write_html
    from scope_hub.analysis.circuits.pruning import prune
    from scope_hub.analysis.cli import check_dictionary_source
    from scope_hub.model_resolution import check_model_spec, load_model_and_tokenizer

    started = time.perf_counter()
    sources = resolve_sources(args.transcoders, args.registry)
    for source in sources:  # typos fail here, not after the model load
        check_dictionary_source(source, args.registry)
    check_model_spec(args.model)
    model, tokenizer = load_model_and_tokenizer(args.model, dtype=getattr(torch, args.dtype))
    graph = attribute(
        args.prompt,
        model,
        sources,
        tokenizer=tokenizer,
        registry=args.registry,
        targets=args.target,
        max_n_logits=args.max_logits,
        max_feature_nodes=args.max_feature_nodes or None,
        batch_size=args.batch_size,
        zero_bos=not args.keep_bos,
        verbose=not args.quiet,
    )
    result = prune(graph, args.node_threshold, args.edge_threshold)
    out = write_graph_json(graph, args.out, result, slug=args.slug)
    if args.html:
        write_html(graph, args.html, result)
    if args.save_graph:
        graph.save(args.save_graph)
    residual = float(graph.completeness().abs().max())
    print(
        f"{out}: {int(result.node_mask.sum())} nodes, {result.n_edges()} links kept of {graph.n_features} active "
        f"features ({len(graph.row_nodes) - graph.n_logits} rows) and {graph.n_logits} logits; "
        f"influence kept {result.kept_influence(graph):.2f}; completeness max |residual| {residual:.2e} "
        f"(relative {graph.relative_completeness_error():.1e}); {time.perf_counter() - started:.1f} s"
    )
    print(dictionary_summary(graph))
    top = ", ".join(f"{label!r} p={float(p):.3f}" for label, p in zip(graph.logit_labels[:3], graph.logit_probs[:3]))
    print(f"logits: {top}")
    if args.target:
        for warning in target_warnings(graph, model, tokenizer):
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def layer_ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``'0-2,5'``."""
    spans: list[list[int]] = []
    for layer in sorted(set(layers)):
        if spans and layer == spans[-1][1] + 1:
            spans[-1][1] = layer
        else:
            spans.append([layer, layer])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def dictionary_summary(graph: Any) -> str:
    """``dictionaries: layers 0-4,6-17; no dictionary (error node only): 5`` for a built graph."""
    covered = graph.info.get("dictionary_layers")
    if covered is None:  # a graph saved before the layers were recorded
        covered = sorted(set(graph.features[:, 0].tolist()))
    missing = [L for L in range(graph.n_layers) if L not in set(covered)]
    line = f"dictionaries: layers {layer_ranges(covered)}" if covered else "dictionaries: none"
    return line + (f"; no dictionary (error node only): {layer_ranges(missing)}" if missing else " (every layer)")


def target_warnings(graph: Any, model: Any, tokenizer: Any, threshold: float | None = None) -> list[str]:
    """A warning per logit target the model gives probability below ``threshold``, naming the
    space-prefixed spelling when that is one token with a higher probability (one extra forward).
    ``threshold``: default ``LOW_TARGET_PROB``."""
    threshold = LOW_TARGET_PROB if threshold is None else threshold
    low = [
        (label, int(i), float(p))
        for label, i, p in zip(graph.logit_labels, graph.logit_ids, graph.logit_probs)
        if float(p) < threshold
    ]
    if not low:
        return []
    import torch

    with torch.no_grad():
        logits = model(input_ids=graph.input_ids[None].to(model.device), use_cache=False).logits[0, -1]
    probs = torch.softmax(logits.double(), dim=-1)
    warnings = []
    for label, _token_id, p in low:
        message = f"target {label!r} has probability {p:.2e}: the graph explains a logit the model barely predicts"
        variant = (
            tokenizer.encode(" " + label, add_special_tokens=False)
            if tokenizer is not None and not label.startswith(" ")
            else []
        )
        if len(variant) == 1 and float(probs[variant[0]]) > p:
            message += f"; did you mean {' ' + label!r} (p={float(probs[variant[0]]):.3f})? pass --target ' {label}'"
        warnings.append(message)
    return warnings
