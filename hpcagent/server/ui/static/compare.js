// hpcagent web UI: comparing tasks (server side: hpcagent/server/ui/compare.py).
// On the task table: "Compare" opens /compare with the ticked tasks (2 to 10).
// On /compare: one Plotly chart per metric with a trace per task and variant (the server's
// events.multi_task_scalar_metrics_iter_histogram), and the "only the differences" filter.
// Data is only ever inserted as text (textContent, Plotly's own escaping of trace names).
"use strict";

(function () {
  var MIN = 2, MAX = 10;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // ---- the task table ----------------------------------------------------------------------
  var button = document.getElementById("compare-selected");
  if (button) {
    var note = document.getElementById("compare-note");
    button.addEventListener("click", function () {
      var ids = Array.prototype.map.call(
        document.querySelectorAll(".select-row:checked"), function (box) { return box.value; });
      if (ids.length < MIN || ids.length > MAX) {
        note.textContent = "Tick " + MIN + " to " + MAX + " tasks to compare (" + ids.length + " ticked).";
        return;
      }
      note.textContent = "";
      window.location.href = "/compare?" + ids.map(function (id) {
        return "ids=" + encodeURIComponent(id);
      }).join("&");
    });
  }

  // ---- the comparison ------------------------------------------------------------------------
  var only = document.getElementById("only-differences");
  if (only) {
    only.addEventListener("change", function () {
      document.querySelectorAll("#compare-params tr.same").forEach(function (row) {
        row.hidden = only.checked;
      });
    });
  }

  var box = document.getElementById("compare-scalars");
  if (!box) return;
  var axis = document.getElementById("compare-x-axis");
  var logScale = document.getElementById("compare-log-scale");
  var data = null;

  function draw() {
    box.textContent = "";
    var metrics = Object.keys(data).sort();
    if (!metrics.length) { box.appendChild(el("p", "", "None of these tasks reported scalars.")); return; }
    metrics.forEach(function (metric) {
      var card = el("div", "chart-card");
      card.appendChild(el("h3", "chart-title", metric));
      var plot = el("div", "chart compare-chart");
      plot.dataset.metric = metric;
      card.appendChild(plot);
      box.appendChild(card);
      var traces = [];
      Object.keys(data[metric]).sort().forEach(function (variant) {
        var byTask = data[metric][variant];
        Object.keys(byTask).forEach(function (taskId) {
          var series = byTask[taskId];
          var xs = axis.value === "time" ? series.x.map(function (ms) { return new Date(ms); }) : series.x;
          traces.push({ x: xs, y: series.y, type: "scatter", mode: "lines+markers",
                        marker: { size: 4 }, name: series.name + " · " + variant,
                        meta: { task: taskId, variant: variant } });
        });
      });
      window.Plotly.newPlot(plot, traces, {
        margin: { t: 10, r: 10, b: 40, l: 60 }, height: 320, showlegend: true,
        xaxis: { title: { text: axis.value === "time" ? "time" : "iteration" } },
        yaxis: { type: logScale.checked ? "log" : "linear" }
      }, { displaylogo: false, responsive: true });
    });
  }

  function load() {
    var url = "/data/compare/scalars?ids=" + encodeURIComponent(box.dataset.ids) + "&x=" + axis.value;
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
          data = body;
          draw();
        });
      })
      .catch(function (err) { box.appendChild(el("p", "error", String(err.message || err))); });
  }

  axis.addEventListener("change", load);
  logScale.addEventListener("change", function () { if (data) draw(); });
  if (window.Plotly) load();
  else window.addEventListener("load", load);
})();
