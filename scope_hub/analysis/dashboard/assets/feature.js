// One feature's page, built from the embedded JSON: stats, histogram, top contexts, logit effects, neighbours.
(function () {
  "use strict";
  var f = JSON.parse(document.getElementById("dashboard-data").textContent);
  var root = document.getElementById("feature");

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  }

  root.appendChild(el("h1", "Feature " + f.id));
  root.appendChild(el("div", "density " + (100 * f.density).toFixed(4) + "% · max " + f.max.toFixed(3) +
    " · mean when active " + f.mean.toFixed(3) + " · " + f.n_tokens + " tokens", "meta"));

  // Histogram of non-zero activations (log-spaced bins), drawn as inline SVG.
  root.appendChild(el("h2", "Activation histogram (non-zero, log bins)"));
  var hist = f.histogram, w = 520, h = 120, n = hist.counts.length;
  var svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", w); svg.setAttribute("height", h + 18); svg.id = "histogram";
  var peak = Math.max.apply(null, hist.counts.concat([1]));
  hist.counts.forEach(function (c, i) {
    var r = document.createElementNS(svg.namespaceURI, "rect");
    var bh = h * c / peak;
    r.setAttribute("class", "bar"); r.setAttribute("x", i * w / n); r.setAttribute("width", Math.max(w / n - 1, 1));
    r.setAttribute("y", h - bh); r.setAttribute("height", bh);
    var title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = hist.edges[i].toPrecision(3) + "–" + hist.edges[i + 1].toPrecision(3) + ": " + c;
    r.appendChild(title); svg.appendChild(r);
  });
  [0, n].forEach(function (i) {
    var t = document.createElementNS(svg.namespaceURI, "text");
    t.setAttribute("x", i === 0 ? 0 : w - 40); t.setAttribute("y", h + 14);
    t.textContent = n ? hist.edges[i].toPrecision(3) : "";
    svg.appendChild(t);
  });
  root.appendChild(svg);

  // Top-activating contexts, each token shaded by its activation relative to the feature's max.
  root.appendChild(el("h2", "Top activating contexts"));
  var box = el("div"); box.id = "contexts"; root.appendChild(box);
  f.contexts.forEach(function (c) {
    var line = el("div", null, "context");
    line.appendChild(el("span", c.max.toFixed(3), "act"));
    c.tokens.forEach(function (tok, i) {
      var span = el("span", tok, "tok");
      var a = f.max > 0 ? Math.max(c.acts[i], 0) / f.max : 0;
      if (a > 0) span.style.background = "rgba(255, 140, 0, " + Math.min(1, 0.1 + 0.9 * a).toFixed(3) + ")";
      span.title = c.acts[i].toFixed(4);
      if (i === c.center) span.className += " max";
      line.appendChild(span);
    });
    box.appendChild(line);
  });
  if (!f.contexts.length) box.appendChild(el("p", "Never active on this corpus.", "meta"));

  // Logit effects and nearest features.
  var cols = el("div", null, "cols"); root.appendChild(cols);
  function table(title, rows, cls, id) {
    var div = el("div"); div.appendChild(el("h2", title));
    var t = el("table"); t.id = id;
    rows.forEach(function (r) {
      var tr = el("tr");
      var name = el("td", null, "tok");
      if (r.href) { var a = el("a", r.label); a.href = r.href; name.appendChild(a); } else { name.textContent = r.label; }
      tr.appendChild(name); tr.appendChild(el("td", r.value.toFixed(3), "num " + cls)); t.appendChild(tr);
    });
    div.appendChild(t); cols.appendChild(div);
  }
  table("Top positive logits", f.logits_pos.map(function (p) { return {label: p[0], value: p[1]}; }), "pos", "logits-pos");
  table("Top negative logits", f.logits_neg.map(function (p) { return {label: p[0], value: p[1]}; }), "neg", "logits-neg");
  table("Nearest features (decoder cosine)", f.neighbors.map(function (p) {
    return {label: "#" + p[0], value: p[1], href: p[2]};
  }), "", "neighbors");
  document.title = "Feature " + f.id;
})();
