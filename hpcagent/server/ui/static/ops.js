// hpcagent web UI: the workers page's CPU / memory / GPU charts (machine_stats the workers
// reported, from /data/worker-stats, i.e. workers.get_stats). One request draws the charts of
// every worker on the page; they are drawn again at most every 30 s (workers report every
// 30 s) as a follower of live.js (HpcagentLive.follow: after the database changed, within the
// page's one request a second), and at once when the range changes. Text from the server is only ever inserted with
// textContent. Loaded from /static (the CSP allows no inline script).
"use strict";

(function () {
  var REFRESH_MS = 30000;
  var CHARTS = [
    { title: "CPU usage (%)", keys: ["cpu_usage"], names: ["cpu"] },
    { title: "Memory used (MB)", keys: ["memory_used"], names: ["memory"] },
    { title: "GPU usage (%) / GPU memory used (MB)", keys: ["gpu_usage", "gpu_memory_used"],
      names: ["gpu", "gpu memory"], none: "No GPU reported (no NVML on this worker)." }
  ];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function draw(box, series) {
    box.textContent = "";
    CHARTS.forEach(function (chart) {
      var card = el("div", "chart-card");
      card.appendChild(el("h3", "chart-title", chart.title));
      box.appendChild(card);
      var traces = [];
      chart.keys.forEach(function (key, i) {
        var s = series[key];
        if (!s || !s.dates.length) return;
        traces.push({ x: s.dates.map(function (d) { return new Date(d * 1000); }), y: s.values,
                      name: chart.names[i], type: "scatter", mode: "lines+markers",
                      marker: { size: 4 }, yaxis: i ? "y2" : "y" });
      });
      if (!traces.length) {
        card.appendChild(el("p", "hint no-series", chart.none || "No reports in this range."));
        return;
      }
      var plot = el("div", "chart stats-chart");
      plot.dataset.metric = chart.keys[0];
      card.appendChild(plot);
      var layout = { margin: { t: 10, r: 50, b: 40, l: 60 }, height: 240, showlegend: traces.length > 1 };
      if (traces.length > 1) layout.yaxis2 = { overlaying: "y", side: "right" };
      window.Plotly.newPlot(plot, traces, layout, { displaylogo: false, responsive: true });
    });
    box.dataset.loaded = "1";
  }

  function start() {
    var select = document.getElementById("stats-range");
    var boxes = Array.prototype.slice.call(document.querySelectorAll(".worker-charts"));
    if (!boxes.length) return;
    var loaded = 0; // when the charts were last asked for
    function load() {
      if (document.hidden) return Promise.resolve();
      loaded = Date.now();
      var url = "/data/worker-stats?range=" + (select ? select.value : "3600") +
        boxes.map(function (b) { return "&worker=" + encodeURIComponent(b.dataset.worker); }).join("");
      return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json().then(function (b) { if (!r.ok) throw new Error(b.error || r.status); return b; }); })
        .then(function (data) {
          boxes.forEach(function (box) { draw(box, data.workers[box.dataset.worker] || {}); });
        })
        .catch(function (err) {
          boxes.forEach(function (box) {
            box.textContent = "";
            box.appendChild(el("p", "error", String(err.message || err)));
          });
        });
    }
    if (select) select.addEventListener("change", load);
    load();
    function follow() {
      if (window.HpcagentLive) {
        window.HpcagentLive.follow(function () {
          return Date.now() - loaded < REFRESH_MS ? Promise.resolve() : load();
        });
      } else {
        window.setInterval(load, REFRESH_MS);
      }
    }
    // live.js comes after this script: it is there once the page has loaded
    if (document.readyState === "complete") follow(); else window.addEventListener("load", follow);
  }
  if (window.Plotly) start(); else window.addEventListener("load", start);
})();
