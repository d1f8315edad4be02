"""A self-contained HTML view of a pruned graph: inline JSON, JS and SVG; no network, no CDN.

Columns are token positions (prompt tokens along the bottom), rows are layers
(embeddings at the bottom, logits on top); several nodes sharing a cell are
spread within it. Links are drawn with width by |weight| (blue positive, red
negative). Hovering a node shows its details; clicking keeps only its links.
The page reads the same JSON as :func:`~.export.graph_json`, embedded in a
``<script type="application/json">`` block, and marks ``#status`` with
``data-rendered="true"`` and the node/link counts once drawn (what tests check
in headless Chromium).

Example:
    >>> page = render_html({"metadata": {"prompt": "a</script>", "prompt_tokens": ["a"], "scan": "s"},
    ...                     "nodes": [], "links": []})
    >>> "<\\\\/script>" in page, "src=" in page, "<link" in page   # nothing is fetched
    (True, False, False)
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from scope_hub.analysis.circuits.export import graph_json
from scope_hub.analysis.circuits.graph import Graph
from scope_hub.analysis.circuits.pruning import PruneResult

_STYLE = """
body{font:13px system-ui,sans-serif;margin:12px;color:#222}
h1{font-size:16px;margin:0 0 4px} .meta{color:#555;margin-bottom:8px}
#wrap{display:flex;gap:12px} svg{border:1px solid #ddd;background:#fcfcfc}
#details{min-width:260px;max-width:340px;font-size:12px;white-space:pre-wrap}
.node{cursor:pointer;stroke:#333;stroke-width:.6} .node.dim{opacity:.15} .link.dim{opacity:.04}
.feature{fill:#e9a23b}.error{fill:#9a9a9a}.embedding{fill:#58a55c}.logit{fill:#8e5fc2}
.tok{font-size:11px;fill:#333} .lay{font-size:10px;fill:#888}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle}
"""

_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('graph-data').textContent);
  const NS = 'http://www.w3.org/2000/svg';
  const nodes = data.nodes, links = data.links, tokens = data.metadata.prompt_tokens || [];
  const kind = t => t === 'embedding' ? 'embedding' : t === 'logit' ? 'logit' : t.includes('error') ? 'error' : 'feature';
  const layerRow = n => n.layer === 'E' ? 0 : n.feature_type === 'logit' ? +n.layer : +n.layer + 1;
  const nRows = Math.max(2, ...nodes.map(layerRow)) + 1, nCols = Math.max(1, tokens.length);
  const colW = Math.max(46, Math.min(110, 1400 / nCols)), rowH = 46, padL = 40, padB = 70;
  const W = padL + nCols * colW + 20, H = nRows * rowH + padB;
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('width', W); svg.setAttribute('height', H); svg.setAttribute('id', 'graph');
  const cells = {};
  nodes.forEach(n => { const k = n.ctx_idx + ':' + layerRow(n); (cells[k] = cells[k] || []).push(n); });
  const pos = {};
  Object.values(cells).forEach(group => group.forEach((n, i) => {
    const x0 = padL + n.ctx_idx * colW, span = colW - 12;
    pos[n.node_id] = [x0 + 6 + span * (i + 0.5) / group.length, H - padB - layerRow(n) * rowH - rowH / 2];
  }));
  const maxW = Math.max(1e-12, ...links.map(l => Math.abs(l.weight)));
  const el = (tag, attrs) => { const e = document.createElementNS(NS, tag);
    Object.entries(attrs).forEach(([k, v]) => e.setAttribute(k, v)); return e; };
  for (let r = 0; r < nRows; r++) {
    const t = el('text', {x: 4, y: H - padB - r * rowH - rowH / 2 + 3, class: 'lay'});
    t.textContent = r === 0 ? 'E' : r === nRows - 1 ? 'out' : 'L' + (r - 1); svg.appendChild(t);
  }
  tokens.forEach((tok, i) => {
    const t = el('text', {x: padL + i * colW + colW / 2, y: H - padB + 16, class: 'tok', 'text-anchor': 'end',
      transform: `rotate(-40 ${padL + i * colW + colW / 2} ${H - padB + 16})`});
    t.textContent = tok; svg.appendChild(t);
  });
  const linkEls = links.filter(l => pos[l.source] && pos[l.target]).map(l => {
    const [x1, y1] = pos[l.source], [x2, y2] = pos[l.target];
    const e = el('line', {x1, y1, x2, y2, class: 'link', 'data-source': l.source, 'data-target': l.target,
      stroke: l.weight >= 0 ? '#2b6cb0' : '#c53030', 'stroke-width': 0.3 + 3.5 * Math.abs(l.weight) / maxW,
      'stroke-opacity': 0.55});
    svg.appendChild(e); return e;
  });
  const details = document.getElementById('details');
  const describe = n => {
    const ins = links.filter(l => l.target === n.node_id), outs = links.filter(l => l.source === n.node_id);
    const top = (ls, key) => ls.sort((a, b) => Math.abs(b.weight) - Math.abs(a.weight)).slice(0, 8)
      .map(l => `  ${l[key]}  ${l.weight.toFixed(4)}`).join('\n');
    return `${n.node_id}  (${n.feature_type})\nlayer ${n.layer}, position ${n.ctx_idx} "${tokens[n.ctx_idx] || ''}"\n` +
      (n.activation != null ? `activation ${n.activation.toFixed(4)}\n` : '') +
      (n.influence != null ? `cumulative influence ${n.influence.toFixed(4)}\n` : '') +
      (n.clerp ? n.clerp + '\n' : '') + `\nincoming:\n${top(ins, 'source')}\noutgoing:\n${top(outs, 'target')}`;
  };
  let pinned = null;
  const nodeEls = nodes.map(n => {
    const [x, y] = pos[n.node_id], k = kind(n.feature_type);
    const e = k === 'feature' ? el('circle', {cx: x, cy: y, r: 5}) :
      el('rect', {x: x - 5, y: y - 5, width: 10, height: 10, transform: k === 'error' ? `rotate(45 ${x} ${y})` : ''});
    e.setAttribute('class', 'node ' + k); e.setAttribute('data-node-id', n.node_id);
    const title = el('title', {}); title.textContent = n.node_id + (n.clerp ? ' ' + n.clerp : ''); e.appendChild(title);
    e.addEventListener('mouseenter', () => { if (!pinned) details.textContent = describe(n); });
    e.addEventListener('click', () => {
      pinned = pinned === n.node_id ? null : n.node_id; details.textContent = describe(n);
      linkEls.forEach(l => l.classList.toggle('dim', !!pinned &&
        l.dataset.source !== pinned && l.dataset.target !== pinned));
    });
    svg.appendChild(e); return e;
  });
  document.getElementById('canvas').appendChild(svg);
  const status = document.getElementById('status');
  status.dataset.nodes = nodeEls.length; status.dataset.links = linkEls.length; status.dataset.rendered = 'true';
  status.textContent = `${nodeEls.length} nodes, ${linkEls.length} links`;
})();
"""


def render_html(data: dict[str, Any], title: str | None = None) -> str:
    """The HTML page for viewer JSON ``data`` (see :func:`~.export.graph_json`)."""
    meta = data.get("metadata", {})
    payload = json.dumps(data).replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    heading = html.escape(title or meta.get("prompt", "attribution graph"))
    legend = "".join(
        f'<span class="{k}" style="background:var(--c)"></span>{k}'.replace("var(--c)", c)
        for k, c in (("feature", "#e9a23b"), ("error", "#9a9a9a"), ("embedding", "#58a55c"), ("logit", "#8e5fc2"))
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{heading}</title><style>{_STYLE}</style></head><body>"
        f'<h1>{heading}</h1><div class="meta">dictionaries: {html.escape(str(meta.get("scan", "")))}'
        f' &middot; <span id="status" data-rendered="false">rendering…</span></div>'
        f'<div class="legend">{legend}</div><div id="wrap"><div id="canvas"></div>'
        '<div id="details">hover a node; click to isolate its links</div></div>'
        f'<script id="graph-data" type="application/json">{payload}</script>'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_html(
    graph: Graph,
    path: str | Path,
    prune_result: PruneResult | None = None,
    *,
    node_threshold: float = 0.8,
    edge_threshold: float = 0.98,
) -> Path:
    """Prune ``graph`` (unless ``prune_result`` is given) and write its self-contained HTML view."""
    data = graph_json(graph, prune_result, node_threshold=node_threshold, edge_threshold=edge_threshold)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(data), encoding="utf-8")
    return path
