// Feature index: a table built from the embedded JSON, filtered by the search box.
// The query may also come from the URL (#q=... or ?q=...), so a headless browser can test filtering.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("dashboard-data").textContent);
  var body = document.getElementById("features");
  var input = document.getElementById("search");
  var count = document.getElementById("count");

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  data.features.forEach(function (f) {
    var tr = document.createElement("tr");
    tr.className = "feature-row";
    tr.id = "feature-" + f.id;
    tr.dataset.id = String(f.id);
    tr.dataset.search = (f.logits.join(" ") + " " + f.context).toLowerCase();
    var link = document.createElement("a");
    link.href = f.page;
    link.textContent = "#" + f.id;
    var first = document.createElement("td");
    first.appendChild(link);
    tr.appendChild(first);
    cell(tr, (100 * f.density).toFixed(3) + "%", "num");
    cell(tr, f.max.toFixed(3), "num");
    cell(tr, f.logits.join("  "), "tok");
    cell(tr, f.context, "tok snippet");
    body.appendChild(tr);
  });

  // Every term must match: "#12" is an exact feature id, anything else a substring of logits/context.
  function matches(tr, term) {
    if (/^#\d+$/.test(term)) return tr.dataset.id === term.slice(1);
    return tr.dataset.search.indexOf(term) >= 0 || tr.dataset.id === term;
  }

  function apply(query) {
    var terms = query.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(body.children, function (tr) {
      var hit = terms.every(function (t) { return matches(tr, t); });
      tr.hidden = !hit;
      if (hit) shown += 1;
    });
    count.textContent = shown + " of " + data.features.length + " features";
    document.body.dataset.shown = String(shown);
  }

  var fromUrl = new URLSearchParams(location.search).get("q") ||
    new URLSearchParams(location.hash.replace(/^#/, "")).get("q") || "";
  input.value = fromUrl;
  input.addEventListener("input", function () { apply(input.value); });
  apply(fromUrl);
})();
