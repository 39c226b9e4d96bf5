// ccm dashboard: live updates from the daemon's event stream (server-sent events).
// On a change, the page fetches itself again and swaps the parts marked data-refresh;
// after a lost connection (a daemon restart, say) it resumes from the last event id.
"use strict";
(function () {
  var status = document.getElementById("live-status");
  var main = document.querySelector("main[data-live]");
  if (!status || !main) return;
  var mode = main.getAttribute("data-live");
  var lastId = null;
  var source = null;
  var busy = false;
  var again = false;

  function show(text, ok) {
    status.textContent = text;
    status.className = "live " + (ok ? "ok" : "down");
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "X-Ccm-Live": "1" } })
      .then(function (response) {
        if (response.status === 401) { show("signed out", false); return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var next = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-refresh][id]").forEach(function (old) {
          var fresh = next.getElementById(old.id);
          if (fresh) old.innerHTML = fresh.innerHTML;
        });
        var tail = document.getElementById("output-tail");
        if (tail) tail.scrollTop = tail.scrollHeight;
        document.dispatchEvent(new CustomEvent("ccm:refreshed"));
      })
      .catch(function () { /* the next event or reconnect refreshes again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  function connect() {
    source = new EventSource("/events" + (lastId !== null ? "?last=" + encodeURIComponent(lastId) : ""));
    source.addEventListener("hello", function (e) { lastId = e.lastEventId; show("live", true); });
    source.addEventListener("change", function (e) {
      lastId = e.lastEventId;
      show("live", true);
      refresh();
    });
    source.addEventListener("activity", function () { if (mode === "activity") refresh(); });
    source.addEventListener("open", function () { show("live", true); });
    source.addEventListener("error", function () {
      show("reconnecting…", false);
      if (source.readyState === EventSource.CLOSED) {
        source.close();
        setTimeout(connect, 1000);
      }
    });
  }

  if (mode !== "") connect(); else show("", true);

  // A page the browser keeps for its back button must not keep its stream: the browser allows a
  // few connections per host, and streams held by hidden pages would stall the next page.
  window.addEventListener("pagehide", function () {
    if (source) { source.close(); source = null; }
  });
  window.addEventListener("pageshow", function (e) {
    if (e.persisted && mode !== "" && source === null) { connect(); refresh(); }
  });

  document.addEventListener("click", function (e) {
    var button = e.target.closest && e.target.closest("button[data-copy]");
    if (!button || !navigator.clipboard) return;
    navigator.clipboard.writeText(button.getAttribute("data-copy")).then(function () {
      button.textContent = "Copied";
    }, function () { button.textContent = "Select and copy"; });
  });
})();
