// ccm dashboard: live updates from the daemon's event stream (server-sent events).
//
// One stream per browser: the tabs elect a leader through a Web Lock; the leader holds the
// EventSource and passes each event to the other tabs over a BroadcastChannel. When the leader
// closes, its lock is released and the next tab in line takes over, resuming from the last event
// id it saw. (Browsers allow six connections per host over HTTP/1.1: one stream per tab would
// starve the seventh tab.)
//
// A page refreshes only on the changes it subscribes to (`data-kinds`, `data-live-task` on <main>),
// and only while visible: a hidden page notes that it is stale and refreshes when shown. Under a
// stream of changes its refreshes are spaced by what they cost (see `interval`). A
// refresh fetches the page and morphs it into the DOM (idiomorph), so focus, typed text, the
// caret, scroll positions and opened <details> survive.
"use strict";
(function () {
  var status = document.getElementById("live-status");
  var main = document.querySelector("main[data-live]");
  if (!status || !main) return;
  var mode = main.getAttribute("data-live");
  var kinds = (main.getAttribute("data-kinds") || "").split(" ").filter(Boolean);
  var task = main.getAttribute("data-live-task") || "";
  var lastId = null;
  var source = null;
  var leading = false;
  var busy = false;
  var again = false;
  var stale = false;
  var channel = typeof BroadcastChannel === "function" ? new BroadcastChannel("ccm-live") : null;

  // Written only when it changes: each write of the DOM costs the browser a style pass and a
  // frame, and the stream brings up to ten events a second.
  function show(text, ok) {
    var className = "live " + (ok ? "ok" : "down");
    if (status.textContent !== text) status.textContent = text;
    if (status.className !== className) status.className = className;
  }

  // Whether an event concerns this page.
  function wanted(type, data) {
    if (type === "activity") return mode === "activity";
    if (type !== "change") return false;
    if (!data || !data.kinds || data.kinds.length === 0) return true; // a resync: all pages
    if (task !== "" && (data.many || (data.tasks && data.tasks.indexOf(task) >= 0))) return true;
    for (var i = 0; i < data.kinds.length; i++) {
      if (kinds.indexOf("*") >= 0 || kinds.indexOf(data.kinds[i]) >= 0) return true;
    }
    return false;
  }

  // A form control the user changed and has not sent: the server's copy must not replace it.
  function edited(node) {
    if (node.nodeType !== 1) return false;
    var tag = node.tagName;
    if (tag === "INPUT" && node.type !== "hidden") {
      if (node.type === "checkbox" || node.type === "radio") return node.checked !== node.defaultChecked;
      return node.value !== node.defaultValue;
    }
    if (tag === "TEXTAREA") return node.value !== node.defaultValue;
    if (tag === "SELECT") {
      for (var i = 0; i < node.options.length; i++) {
        if (node.options[i].selected !== node.options[i].defaultSelected) return true;
      }
    }
    return false;
  }

  var morphing = {
    morphStyle: "outerHTML",
    ignoreActiveValue: true,
    restoreFocus: true,
    callbacks: {
      beforeNodeMorphed: function (old) { return !edited(old); },
      beforeAttributeUpdated: function (name, node, how) {
        // A <details> the reader opened or closed stays so.
        if (name === "open" && node.tagName === "DETAILS" && node.__ccmTouched) return false;
        if (node.hasAttribute && node.hasAttribute("data-keep-" + name)) return false;
        return true;
      },
    },
  };

  // `timing`: when the refresh started and its answer arrived; the `ccm:refreshed` event tells
  // how long its fetch, parse and morph took (the benchmark reads them).
  function apply(html, timing) {
    var parsing = performance.now();
    var next = new DOMParser().parseFromString(html, "text/html");
    var morphing_at = performance.now();
    // An output tail scrolled to its end follows the output; one scrolled back stays.
    var following = [];
    document.querySelectorAll("pre.tail[id]").forEach(function (tail) {
      if (tail.scrollTop + tail.clientHeight >= tail.scrollHeight - 4) following.push(tail.id);
    });
    // A part the server sends as it sent it last time is left alone: on a board of 500 cards,
    // a few new tasks change one or two columns, and morphing the rest costs the browser a walk
    // of every card.
    document.querySelectorAll("[data-refresh][id]").forEach(function (old) {
      var fresh = next.getElementById(old.id);
      if (!fresh) return;
      var served = fresh.outerHTML;
      if (old.__ccmServed === served) return;
      Idiomorph.morph(old, fresh, morphing);
      old.__ccmServed = served;
    });
    following.forEach(function (id) {
      var tail = document.getElementById(id);
      if (tail) tail.scrollTop = tail.scrollHeight;
    });
    var done = performance.now();
    document.dispatchEvent(new CustomEvent("ccm:refreshed", { detail: {
      fetch: timing.answered - timing.started, parse: morphing_at - parsing, morph: done - morphing_at,
    } }));
  }

  // Under a stream of changes a page refreshes at most once per `interval()` from the start of
  // its last refresh: ten times what that refresh took (fetch and morph, at least 25 ms),
  // doubled each time a change had to wait and halved after a refresh during which no change
  // came, at most two seconds. A change after a quiet period shows at once (and the stretch
  // starts over), so a page stays live while spending at most a tenth of its time on
  // refreshes (with four times, ten open pages took a creation burst's rate to under half).
  var BUDGET = 10;
  var LONGEST = 2000;
  var cost = 0;
  var stretch = 1;
  var lastStart = -Infinity;
  var timer = null;
  var etag = null;

  // A refresh counts as at least 25 ms: one answered 304 in a few milliseconds is spaced out
  // under a stream of changes too.
  var LEAST = 25;

  function interval() {
    return Math.min(LONGEST, Math.max(cost, LEAST) * BUDGET * stretch);
  }

  function refresh() {
    if (document.hidden) { stale = true; return; }
    if (busy || timer !== null) { again = true; return; }
    var wait = lastStart + interval() - performance.now();
    if (wait <= 0) {
      stretch = 1;
      run();
    } else {
      stretch = Math.min(stretch * 2, 64);
      timer = setTimeout(run, wait);
    }
  }

  function run() {
    timer = null;
    if (document.hidden) { stale = true; return; }
    // The changes that came while this refresh waited are in what it fetches.
    again = false;
    busy = true;
    stale = false;
    var started = performance.now();
    lastStart = started;
    var headers = { "X-Ccm-Live": "1" };
    // The server answers 304 when the page is what this tab shows already: nothing to morph.
    if (etag) headers["If-None-Match"] = etag;
    fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: headers })
      .then(function (response) {
        if (response.status === 401) { show("signed out", false); return null; }
        if (response.status === 304 || !response.ok) return null;
        etag = response.headers.get("ETag");
        return response.text();
      })
      .then(function (html) {
        if (html) apply(html, { started: started, answered: performance.now() });
      })
      .catch(function () { /* the next event or reconnect refreshes again */ })
      .then(function () {
        busy = false;
        cost = performance.now() - started;
        // No change came while it ran: the stream has thinned, the spacing shrinks.
        if (again) { again = false; refresh(); } else { stretch = Math.max(1, stretch / 2); }
      });
  }

  // An event from the stream (this tab leads) or from the leader (over the channel).
  function receive(type, id, data) {
    if (id !== null && id !== undefined && id !== "") lastId = id;
    if (wanted(type, data)) {
      document.dispatchEvent(new CustomEvent("ccm:change"));
      refresh();
    }
  }

  function tell(message) {
    if (channel && leading) channel.postMessage(message);
  }

  var told = null;

  // The status, shown here and told to the other tabs when it changed.
  function state(text, ok) {
    show(text, ok);
    if (told === text + ok) return;
    told = text + ok;
    tell({ type: "status", text: text, ok: ok, id: lastId });
  }

  function connect() {
    source = new EventSource("/events" + (lastId !== null ? "?last=" + encodeURIComponent(lastId) : ""));
    source.addEventListener("hello", function (e) { lastId = e.lastEventId; state("live", true); });
    ["change", "activity"].forEach(function (type) {
      source.addEventListener(type, function (e) {
        var data = null;
        try { data = JSON.parse(e.data); } catch (_) { data = null; }
        state("live", true);
        tell({ type: type, id: e.lastEventId, data: data });
        receive(type, e.lastEventId, data);
      });
    });
    source.addEventListener("open", function () { state("live", true); });
    source.addEventListener("error", function () {
      state("reconnecting…", false);
      if (source && source.readyState === EventSource.CLOSED) {
        source.close();
        source = null;
        setTimeout(function () { if (leading && source === null) connect(); }, 1000);
      }
    });
  }

  var release = null;

  function lead() {
    leading = true;
    connect();
    // Held until this page goes (or is kept for the back button): then the next tab leads.
    return new Promise(function (resolve) { release = resolve; });
  }

  function elect() {
    navigator.locks.request("ccm-live-leader", lead);
  }

  if (mode === "") {
    show("", true);
  } else if (channel && navigator.locks && navigator.locks.request) {
    channel.onmessage = function (e) {
      var m = e.data || {};
      if (m.type === "ask") {
        if (leading) tell({ type: "status", text: status.textContent, ok: status.className.indexOf("ok") >= 0, id: lastId });
      } else if (m.type === "status") {
        if (!leading) {
          show(m.text, m.ok);
          if (m.id) lastId = m.id;
        }
      } else if (!leading) {
        receive(m.type, m.id, m.data);
      }
    };
    elect();
    channel.postMessage({ type: "ask" });
  } else {
    lead();
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden && stale) refresh();
  });

  // A page kept for the back button must keep neither the stream nor the lead.
  var elected = channel && navigator.locks && navigator.locks.request && mode !== "";
  window.addEventListener("pagehide", function () {
    if (source) { source.close(); source = null; }
    if (elected && leading) { leading = false; if (release) release(); }
  });
  window.addEventListener("pageshow", function (e) {
    if (!e.persisted || mode === "") return;
    if (elected) elect(); else if (source === null) connect();
    refresh();
  });

  // A <details> the reader opens or closes is theirs from then on (a property: the morph keeps
  // the element but would drop an attribute the server did not send).
  document.addEventListener("click", function (e) {
    var summary = e.target.closest && e.target.closest("summary");
    if (summary && summary.parentElement && summary.parentElement.tagName === "DETAILS") {
      summary.parentElement.__ccmTouched = true;
    }
  });

  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("button[data-copy]");
    if (!button || !navigator.clipboard) return;
    navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
      button.textContent = "Copied";
    }, function () { button.textContent = "Select and copy"; });
  });
})();
