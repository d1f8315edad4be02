"""Static HTML for feature dashboards: ``index.html`` (searchable table) + one page per feature.

Every page is self-contained: CSS and JavaScript are inlined from ``assets/``, the data
is embedded as JSON (``<script type="application/json">``, ``<`` escaped), and the page is
built client-side with ``textContent`` only (token strings are never parsed as HTML). No
server, no CDN: open ``index.html`` from disk. The index reads an initial search query
from ``#q=...`` or ``?q=...``.

Example:
    >>> import tempfile, torch
    >>> from scope_hub.analysis.dashboard.collect import collect_from_arrays
    >>> from scope_hub.testing.tiny_models import tiny_tokenizer
    >>> stats = collect_from_arrays(torch.tensor([[104, 105]]), torch.tensor([[[0.0, 1.0], [2.0, 0.0]]]))
    >>> out = write_dashboard(tempfile.mkdtemp(), stats, tiny_tokenizer(), title="demo")
    >>> sorted(p.name for p in out.parent.rglob("*.html"))
    ['f0.html', 'f1.html', 'index.html']
    >>> summary = dashboard_summary(out)
    >>> summary.features, summary.live, summary.pages, summary.bytes > 0
    (2, 2, 2, True)
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import torch

from scope_hub.analysis.dashboard.collect import BIN_EDGES, CollectedStats
from scope_hub.analysis.dashboard.effects import LogitEffects
from scope_hub.errors import ConfigError

__all__ = ["DashboardSummary", "TokenText", "dashboard_summary", "write_dashboard"]

INDEX_LOGITS, SNIPPET = 5, 80


class TokenText:
    """Decodes single token ids once each (vocabularies are large, pages reuse tokens)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.memo: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.memo:
            self.memo[token_id] = self.tokenizer.decode([int(token_id)])
        return self.memo[token_id]


def _asset(name: str) -> str:
    return resources.files("scope_hub.analysis.dashboard").joinpath("assets").joinpath(name).read_text("utf-8")


def _json(data: Any) -> str:
    # "<" escaped so no string can close the script element or open a comment.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _page(title: str, body: str, data: Any, script: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        f"<style>{_asset('style.css')}</style></head>\n<body>{body}\n"
        f"<noscript>This page is built by inline JavaScript; enable it to see the dashboard.</noscript>\n"
        f'<script type="application/json" id="dashboard-data">{_json(data)}</script>\n'
        f"<script>{_asset(script)}</script></body></html>\n"
    )


def _histogram(stats: CollectedStats, feature: int) -> dict[str, list]:
    counts = stats.histogram[feature]
    occupied = counts.nonzero()
    if not len(occupied):
        return {"edges": [], "counts": []}
    lo, hi = int(occupied[0]), int(occupied[-1]) + 1
    return {"edges": [float(e) for e in BIN_EDGES[lo : hi + 1]], "counts": counts[lo:hi].tolist()}


def _feature_data(
    f: int,
    stats: CollectedStats,
    text: TokenText,
    effects: LogitEffects | None,
    neighbors: tuple[torch.Tensor, torch.Tensor] | None,
    page_of: dict[int, str],
) -> dict[str, Any]:
    contexts = [
        {"max": v, "tokens": [text(t) for t in toks], "acts": acts, "center": c}
        for v, toks, acts, c in stats.contexts(f)
    ]
    data = {
        "id": f,
        "density": float(stats.density[f]),
        "max": float(stats.maximum[f]),
        "mean": float(stats.mean_active[f]),
        "n_tokens": stats.n_tokens,
        "histogram": _histogram(stats, f),
        "contexts": contexts,
        "logits_pos": [],
        "logits_neg": [],
        "neighbors": [],
    }
    if effects is not None:
        data["logits_pos"] = [[text(int(i)), float(v)] for i, v in zip(effects.top_ids[f], effects.top_values[f])]
        data["logits_neg"] = [[text(int(i)), float(v)] for i, v in zip(effects.bottom_ids[f], effects.bottom_values[f])]
    if neighbors is not None:
        data["neighbors"] = [
            [int(i), float(c), page_of.get(int(i), "").removeprefix("features/")]
            for i, c in zip(neighbors[0][f], neighbors[1][f])
        ]
    return data


def _snippet(context: dict[str, Any]) -> str:
    tokens, center = context["tokens"], context["center"]
    left = "".join(tokens[:center])[-SNIPPET // 2 :]
    return (left + "[" + tokens[center] + "]" + "".join(tokens[center + 1 :]))[:SNIPPET].replace("\n", "⏎")


def write_dashboard(
    out_dir: str | Path,
    stats: CollectedStats,
    tokenizer: Any,
    *,
    effects: LogitEffects | None = None,
    neighbors: tuple[torch.Tensor, torch.Tensor] | None = None,
    title: str = "Feature dashboard",
    note: str = "",
    include_dead: bool = True,
    max_features: int | None = None,
) -> Path:
    """Write ``index.html`` and ``features/f{i}.html`` under ``out_dir``; returns the index path.

    ``include_dead=False`` skips pages of features never active on the corpus (they stay in
    the index, unlinked); ``max_features`` caps the number of pages (lowest ids first).
    The index lists features by density, highest first, dead ones last; its header counts
    live and dead features.
    """
    out = Path(out_dir)
    (out / "features").mkdir(parents=True, exist_ok=True)
    text = TokenText(tokenizer)
    chosen = [f for f in range(len(stats.count)) if include_dead or stats.count[f] > 0][:max_features]
    page_of = {f: f"features/f{f}.html" for f in chosen}
    rows: list[dict[str, Any]] = []  # JSON rows of the index page
    for f in range(len(stats.count)):
        data = (
            _feature_data(f, stats, text, effects, neighbors, page_of) if f in page_of or stats.count[f] > 0 else None
        )
        if f in page_of:
            (out / page_of[f]).write_text(
                _page(
                    f"Feature {f}",
                    '<div id="feature"></div><p class="meta"><a href="../index.html">all features</a></p>',
                    data,
                    "feature.js",
                ),
                "utf-8",
            )
        rows.append(
            {
                "id": f,
                "density": float(stats.density[f]),
                "max": float(stats.maximum[f]),
                "logits": [p[0] for p in (data or {}).get("logits_pos", [])[:INDEX_LOGITS]],
                "context": _snippet(data["contexts"][0]) if data and data["contexts"] else "",
                "page": page_of.get(f, ""),
            }
        )
    # Most active first; dead features (never active on the corpus) last, in id order.
    rows.sort(key=lambda r: (-r["density"], -r["max"], r["id"]))
    live = int((stats.count > 0).sum())
    meta = (
        f"{live} live / {len(stats.count) - live} dead features (dead: never active on these {stats.n_tokens} "
        f"tokens) · {len(page_of)} feature pages · sorted by density, dead last. {note}"
    )
    body = (
        f'<h1>{html.escape(title)}</h1><div class="meta">{html.escape(meta)}</div>'
        '<input id="search" type="search" placeholder="Search features: id, logit tokens, context text" '
        'autocomplete="off"><span id="count"></span>'
        "<table><thead><tr><th>feature</th><th>density</th><th>max</th><th>top logits</th><th>top context</th>"
        '</tr></thead><tbody id="features"></tbody></table>'
    )
    index = out / "index.html"
    index.write_text(_page(title, body, {"features": rows}, "index.js"), "utf-8")
    return index


class DashboardSummary(NamedTuple):
    """What one dashboard holds: features in the index, live ones, pages written, bytes on disk."""

    features: int
    live: int
    pages: int
    bytes: int


def dashboard_summary(index: str | Path) -> DashboardSummary:
    """Counts and total size (index + the feature pages it links) of a written dashboard."""
    index = Path(index)
    pattern = r'<script type="application/json" id="dashboard-data">(.*?)</script>'
    match = re.search(pattern, index.read_text("utf-8"), re.S)
    if match is None:
        raise ConfigError(f"{index}: not a scope-hub dashboard index (no embedded data); rebuild it")
    rows = json.loads(match.group(1))["features"]
    pages = [index.parent / r["page"] for r in rows if r["page"]]
    size = index.stat().st_size + sum(p.stat().st_size for p in pages if p.is_file())
    return DashboardSummary(len(rows), sum(r["density"] > 0 for r in rows), len(pages), size)
