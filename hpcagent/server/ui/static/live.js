// hpcagent web UI: live pages (server side: hpcagent/server/ui/live.py).
//
// A page is live when it has elements marked data-live (each with an id). Once a second this
// script asks the page's own URL again with the header X-Hpcagent-Live (the token of what it
// shows); the server answers 204 while nothing changed, else the new page, whose data-live
// elements replace the old ones here. What the user did in them survives: ticked boxes, typed
// values; a region holding the focused field, or the element a pointer is pressed on (a click
// in progress would land on a removed node and be lost), waits for the next poll. Then the event
// "hpcagent:live" fires on document (detail.regions: the ids swapped).
//
// One request per tick, at most one a second: scripts with data of their own to poll register
// with HpcagentLive.follow(fn) (fn returns a Promise); after a tick that saw the database
// change, the next ticks run the followers, one each, instead of the page's poll.
"use strict";

(function () {
  var PERIOD_MS = 1000;
  var token = "-";
  var busy = false;
  var stopped = false;
  var followers = [];
  var due = [];
  var sources = {}; // region id -> the server's HTML it was last built from
  var pressed = null; // the element a pointer is down on, until it is released

  document.addEventListener("pointerdown", function (e) { pressed = e.target; }, true);
  ["pointerup", "pointercancel"].forEach(function (type) {
    // released after the click event of this press has been dispatched
    document.addEventListener(type, function () { setTimeout(function () { pressed = null; }); }, true);
  });

  function key(input) {
    if (input.type === "checkbox" || input.type === "radio") {
      return (input.id || input.name) + "=" + input.value;
    }
    return input.id ? "#" + input.id : "";
  }

  // The user's own state in a region: ticked boxes, changed values.
  function userState(region) {
    var state = {};
    region.querySelectorAll("input, select, textarea").forEach(function (input) {
      var k = key(input);
      if (!k) return;
      if (input.type === "checkbox" || input.type === "radio") {
        if (input.checked !== input.defaultChecked) state[k] = { checked: input.checked };
      } else if (input.tagName === "SELECT") {
        var changed = Array.prototype.some.call(input.options, function (o) {
          return o.selected !== o.defaultSelected;
        });
        if (changed) state[k] = { value: input.value };
      } else if (input.value !== input.defaultValue) {
        state[k] = { value: input.value };
      }
    });
    return state;
  }

  function restore(region, state) {
    region.querySelectorAll("input, select, textarea").forEach(function (input) {
      var saved = state[key(input)];
      if (!saved) return;
      if ("checked" in saved) input.checked = saved.checked;
      else input.value = saved.value;
    });
  }

  // A field the user may be typing in (a swap would take it away mid-word).
  function typing(node) {
    if (node.tagName === "TEXTAREA" || node.tagName === "SELECT") return true;
    return node.tagName === "INPUT" && !/^(checkbox|radio|submit|button|reset)$/.test(node.type);
  }

  // Swap the page's data-live regions for those of html; false when one had to wait.
  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var swapped = [];
    var waited = false;
    document.querySelectorAll("[data-live]").forEach(function (old) {
      if (!old.id) return;
      var next = fresh.getElementById(old.id);
      if (!next) return;
      var source = next.outerHTML;
      if (source === (sources[old.id] === undefined ? old.outerHTML : sources[old.id])) return;
      var busyHere = old.contains(document.activeElement) && typing(document.activeElement);
      if (busyHere || (pressed && old.contains(pressed))) {
        waited = true;
        return;
      }
      var state = userState(old);
      var node = document.importNode(next, true);
      sources[node.id] = source;
      old.replaceWith(node);
      restore(node, state);
      swapped.push(node.id);
    });
    if (fresh.title) document.title = fresh.title;
    if (swapped.length) {
      document.dispatchEvent(new CustomEvent("hpcagent:live", { detail: { regions: swapped } }));
    }
    return !waited;
  }

  function pollPage() {
    return fetch(location.pathname + location.search, {
      credentials: "same-origin",
      cache: "no-store",
      redirect: "manual",
      headers: { "X-Hpcagent-Live": token }
    }).then(function (reply) {
      var next = reply.headers.get("X-Hpcagent-Live");
      if (reply.status === 204) {
        if (next && next.split(".")[0] !== token.split(".")[0]) due = followers.slice();
        if (next) token = next;
        return;
      }
      if (reply.status !== 200 || !next) {
        // signed out (a redirect to the sign-in page) or the page is gone: stop asking
        if (reply.type === "opaqueredirect" || reply.status === 401) stopped = true;
        return;
      }
      return reply.text().then(function (html) {
        if (swap(html)) token = next;
        due = followers.slice();
      });
    });
  }

  function tick() {
    if (busy || stopped || document.hidden) return;
    if (!followers.length && !document.querySelector("[data-live]")) return;
    busy = true;
    var work = due.length ? due.shift() : pollPage;
    var done = function () { busy = false; };
    Promise.resolve().then(work).then(done, done);
  }

  window.HpcagentLive = {
    // fn() -> Promise: polled after the page saw a change, within the one-request budget.
    follow: function (fn) { followers.push(fn); },
    period: PERIOD_MS
  };

  window.setInterval(tick, PERIOD_MS);
})();
