// hpcagent web UI: the little script the server-rendered pages need.
// Data from the server is only ever inserted with textContent (never innerHTML): a task name
// or a log line is text, whatever it contains. Loaded from /static (the CSP allows no inline
// script); Plotly comes from /static/plotly.min.js, shipped by the plotly Python package.
"use strict";

(function () {
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
          return body;
        });
      });
  }

  function showError(box, err) {
    box.appendChild(el("p", "error", String(err && err.message ? err.message : err)));
  }

  // ---- confirmations and selections --------------------------------------------------------
  document.addEventListener("click", function (ev) {
    var target = ev.target;
    if (target && target.dataset && target.dataset.confirm) {
      if (!window.confirm(target.dataset.confirm)) ev.preventDefault();
    }
  });
  var all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      document.querySelectorAll(".select-row").forEach(function (box) { box.checked = all.checked; });
    });
  }

  // ---- console -------------------------------------------------------------------------------
  function Console(box) {
    var base = "/data/tasks/" + encodeURIComponent(box.dataset.task) + "/console?size=" +
      encodeURIComponent(box.dataset.pageSize || "1000");
    // The boundary timestamps and how many events of each are shown (events share a ms).
    var oldest = null, newest = null, oldestCount = 0, newestCount = 0, total = 0;
    var search = document.getElementById("console-search");
    var tail = document.getElementById("console-tail");
    var count = document.getElementById("console-count");
    var older = document.getElementById("console-older");

    function render(lines) {
      var frag = document.createDocumentFragment();
      lines.forEach(function (ev) {
        var parts = ev.msg.replace(/\n$/, "").split("\n");
        parts.forEach(function (text) {
          var row = el("div", "line" + (ev.level === "error" ? " err" : ""), text);
          row.dataset.ts = ev.ts;
          frag.appendChild(row);
        });
      });
      return frag;
    }
    function applySearch() {
      var q = (search.value || "").toLowerCase();
      var shown = 0, rows = box.children;
      for (var i = 0; i < rows.length; i++) {
        var hit = !q || rows[i].textContent.toLowerCase().indexOf(q) >= 0;
        rows[i].hidden = !hit;
        if (hit) shown++;
      }
      count.textContent = shown + " lines shown, " + total + " events in all";
    }
    function load(url, where) {
      return getJSON(url).then(function (data) {
        total = data.total;
        if (!data.lines.length) { applySearch(); return 0; }
        var first = data.lines[0].ts, last = data.lines[data.lines.length - 1].ts;
        var atFirst = data.lines.filter(function (ev) { return ev.ts === first; }).length;
        var atLast = data.lines.filter(function (ev) { return ev.ts === last; }).length;
        var atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 4;
        var frag = render(data.lines);
        if (where === "top") {
          var before = box.scrollHeight;
          box.insertBefore(frag, box.firstChild);
          box.scrollTop += box.scrollHeight - before;
        } else {
          box.appendChild(frag);
          if (atBottom || where === "init") box.scrollTop = box.scrollHeight;
        }
        if (oldest === null || first < oldest) { oldest = first; oldestCount = atFirst; }
        else if (first === oldest) oldestCount += atFirst;
        if (newest === null || last > newest) { newest = last; newestCount = atLast; }
        else if (last === newest) newestCount += atLast;
        applySearch();
        return data.lines.length;
      }).catch(function (err) { showError(box, err); });
    }
    load(base, "init");
    older.addEventListener("click", function () {
      if (oldest !== null) load(base + "&before=" + oldest + "&skip=" + oldestCount, "top");
    });
    search.addEventListener("input", applySearch);
    // The live tail: new lines after the page saw the database change (live.js's ticker, so
    // that the page stays within one request a second).
    window.HpcagentLive.follow(function () {
      if (!tail.checked) return null;
      return load(base + (newest === null ? "" : "&after=" + newest + "&skip=" + newestCount),
                  newest === null ? "init" : "bottom");
    });
  }
  var consoleBox = document.getElementById("console");
  if (consoleBox) Console(consoleBox);

  // ---- scalars -----------------------------------------------------------------------------
  function smooth(ys, weight) {
    if (!weight) return ys;
    var out = [], last = null;
    ys.forEach(function (y) {
      if (typeof y !== "number") { out.push(y); return; }
      last = last === null ? y : last * weight + (1 - weight) * y;
      out.push(last);
    });
    return out;
  }
  // Plotly's default colours, set explicitly so that a line and its band share one.
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf"];
  function fade(hex) {
    var n = parseInt(hex.slice(1), 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + ",0.2)";
  }
  function Scalars(box) {
    var base = "/data/tasks/" + encodeURIComponent(box.dataset.task) + "/scalars";
    var slider = document.getElementById("smoothing");
    var sliderValue = document.getElementById("smoothing-value");
    var axis = document.getElementById("x-axis");
    var logScale = document.getElementById("log-scale");
    var data = null;

    function draw() {
      box.textContent = "";
      var weight = parseFloat(slider.value) || 0;
      sliderValue.textContent = weight.toFixed(2);
      var metrics = Object.keys(data).sort();
      if (!metrics.length) { box.appendChild(el("p", "", "No scalars reported.")); return; }
      metrics.forEach(function (metric) {
        var card = el("div", "chart-card");
        card.appendChild(el("h3", "chart-title", metric));
        var plot = el("div", "chart scalar-chart");
        plot.dataset.metric = metric;
        var variants = Object.keys(data[metric]).sort();
        var lines = [], bands = [], shown = 0, points = 0;
        variants.forEach(function (variant, i) {
          var series = data[metric][variant];
          var color = COLORS[i % COLORS.length];
          var xs = axis.value === "time" ? series.x.map(function (ms) { return new Date(ms); }) : series.x;
          var sampled = series.count > series.x.length;
          shown += series.x.length;
          points += series.count || series.x.length;
          lines.push({ x: xs, y: smooth(series.y, weight), name: variant, type: "scatter",
                       mode: sampled ? "lines" : "lines+markers", line: { color: color },
                       marker: { size: 4, color: color }, legendgroup: variant });
          if (sampled) {
            // the min-max band of each bucket (fill to the trace before: the max)
            bands.push({ x: xs, y: series.y_max, type: "scatter", mode: "lines",
                         line: { width: 0, color: color }, showlegend: false,
                         hoverinfo: "skip", legendgroup: variant, name: variant + " max" });
            bands.push({ x: xs, y: series.y_min, type: "scatter", mode: "lines",
                         line: { width: 0, color: color }, fill: "tonexty",
                         fillcolor: fade(color), showlegend: false, hoverinfo: "skip",
                         legendgroup: variant, name: variant + " min" });
          }
        });
        if (points > shown) {
          card.appendChild(el("p", "hint sampled-note", shown + " of " + points +
            " points shown: each the average of its bucket, the band its min and max"));
        }
        card.appendChild(plot);
        box.appendChild(card);
        var traces = lines.concat(bands);
        window.Plotly.newPlot(plot, traces, {
          margin: { t: 10, r: 10, b: 40, l: 60 }, height: 300,
          xaxis: { title: { text: axis.value === "time" ? "time" : "iteration" } },
          yaxis: { type: logScale.checked ? "log" : "linear" }, showlegend: true
        }, { displaylogo: false, responsive: true });
      });
    }
    var last = "";
    function fetchData() {
      return getJSON(base + "?x=" + axis.value).then(function (d) {
        var text = JSON.stringify(d);
        if (text === last) return;
        last = text;
        data = d;
        draw();
      }).catch(function (err) { showError(box, err); });
    }
    // new points while the task runs: after the page saw a change (live.js's ticker)
    window.HpcagentLive.follow(fetchData);
    slider.addEventListener("input", function () { if (data) draw(); });
    logScale.addEventListener("change", function () { if (data) draw(); });
    axis.addEventListener("change", function () { last = ""; fetchData(); });
    fetchData();
  }

  // ---- plots and debug samples ---------------------------------------------------------------
  function Events(box, kind) {
    var base = "/data/tasks/" + encodeURIComponent(box.dataset.task) + "/events?kind=" + kind;
    var more = el("button", "more", "Load more");
    more.type = "button";
    var scroll = "";
    var shown = 0;
    function add(ev) {
      var card = el("div", kind === "plot" ? "chart-card" : "sample");
      var title = ev.metric + (ev.variant ? " / " + ev.variant : "") +
        (ev.iter !== null && ev.iter !== undefined ? " · iteration " + ev.iter : "");
      card.appendChild(el("h3", "chart-title", title));
      if (kind === "plot") {
        var plot = el("div", "chart plot-chart");
        card.appendChild(plot);
        box.insertBefore(card, more);
        var fig = ev.figure || {};
        var layout = Object.assign({ height: 360 }, fig.layout || {});
        window.Plotly.newPlot(plot, fig.data || [], layout, { displaylogo: false, responsive: true });
      } else {
        var url = ev.url || "";
        if (/^(https?:\/\/|\/)/.test(url)) {
          var link = el("a");
          link.href = url;
          var img = el("img", "debug-image");
          img.src = url;
          img.alt = title;
          link.appendChild(img);
          card.appendChild(link);
        } else {
          card.appendChild(el("p", "mono", url));
        }
        box.insertBefore(card, more);
      }
    }
    function load() {
      getJSON(base + (scroll ? "&scroll=" + encodeURIComponent(scroll) : "")).then(function (data) {
        data.events.forEach(add);
        shown += data.events.length;
        scroll = data.scroll;
        more.hidden = !data.events.length || shown >= data.total;
        if (!shown) box.insertBefore(el("p", "", kind === "plot" ? "No plots reported." : "No debug samples reported."), more);
      }).catch(function (err) { showError(box, err); });
    }
    box.appendChild(more);
    more.addEventListener("click", load);
    load();
  }

  function whenPlotly(fn) {
    if (window.Plotly) { fn(); return; }
    window.addEventListener("load", fn);
  }
  var scalarBox = document.getElementById("scalars");
  if (scalarBox) whenPlotly(function () { Scalars(scalarBox); });
  var plotBox = document.getElementById("plots");
  if (plotBox) whenPlotly(function () { Events(plotBox, "plot"); });
  var debugBox = document.getElementById("debug");
  if (debugBox) Events(debugBox, "debug");
})();
