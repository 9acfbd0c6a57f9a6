// The console's only script: times in the viewer's zone, and pages that
// follow /ui/events (the API's event stream), or poll (data-poll, in ms),
// to refresh in place.
(function () {
  "use strict";
  function localTimes(root) {
    root.querySelectorAll("time[data-ms]").forEach(function (t) {
      var d = new Date(Number(t.dataset.ms));
      if (!isNaN(d)) {
        t.dateTime = d.toISOString();
        t.title = d.toISOString();
        t.textContent = d.toLocaleString();
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    // The list's date filters are in the viewer's time: send its offset.
    var tz = document.getElementById("tz");
    if (tz) tz.value = String(new Date().getTimezoneOffset());
    var live = document.getElementById("live");
    if (!live) return;
    var poll = Number(live.dataset.poll || 0);
    if (!poll && !window.EventSource) return;
    var only = live.dataset.artifact;
    var say = function (text) {
      var s = document.getElementById("live-status");
      if (s) s.textContent = text;
    };
    var timer = null, busy = false;
    function refresh() {
      timer = null;
      if (busy) { timer = setTimeout(refresh, 1000); return; }
      busy = true;
      fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (r) {
          if (r.redirected || !r.ok) throw new Error(String(r.status));
          return r.text();
        })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
          if (!fresh) return;
          // Keep the keyboard's place: refocus the link that had it.
          var had = document.activeElement && live.contains(document.activeElement)
            ? document.activeElement.getAttribute("href") : null;
          live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
          localTimes(live);
          if (had) {
            var again = live.querySelector('a[href="' + had.replace(/"/g, "") + '"]');
            if (again) again.focus();
          }
          say("Live · updated " + new Date().toLocaleTimeString());
        })
        .catch(function () { say("Live refresh failed; reload the page."); })
        .finally(function () { busy = false; });
    }
    function soon() { if (!timer) timer = setTimeout(refresh, 400); }
    if (poll) {
      say("Live");
      setInterval(function () { if (!document.hidden) soon(); }, poll);
      return;
    }
    var es = new EventSource("/ui/events");
    es.addEventListener("status", function (e) {
      if (only) {
        try { if (JSON.parse(e.data).artifact_id !== only) return; } catch (_) { return; }
      }
      soon();
    });
    es.addEventListener("lagged", soon);
    es.onopen = function () { say("Live"); };
    es.onerror = function () { say("Live updates interrupted; reconnecting…"); };
  });
})();
