// threads-poller console: progressive enhancement of the server-rendered page (no build step).
// Live: final states arrive over /v1/events (Server-Sent Events); each one re-renders the panels
// from /console/panels (HTML made and escaped on the server) and is listed under "Live events".
// Forms (cancel, replay, discard) are sent with fetch and answered in place; without script they
// post and come back to the page with a notice.
(function () {
  "use strict";
  var panels = document.getElementById("panels");
  var events = document.getElementById("events");
  var live = document.getElementById("live");
  var flash = document.getElementById("flash");
  var meta = document.querySelector('meta[name="csrf-token"]');
  var csrf = meta ? meta.getAttribute("content") : "";
  var pending = null;
  var refreshes = 0;

  function refresh() {
    if (pending !== null) return;
    pending = setTimeout(function () {
      pending = null;
      fetch(panels.getAttribute("data-url"), {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      }).then(function (r) {
        if (r.redirected || r.status === 401) {
          window.location.href = "/login";
          return null;
        }
        return r.ok ? r.text() : null;
      }).then(function (text) {
        if (text !== null && text !== undefined) {
          panels.innerHTML = text;
          var rendered = document.getElementById("rendered");
          var now = document.getElementById("now");
          if (rendered && now) now.textContent = rendered.getAttribute("data-ts");
          refreshes += 1;
          panels.setAttribute("data-refreshes", String(refreshes));
        }
      }).catch(function () { /* the next event or tick tries again */ });
    }, 200);
  }

  function say(text, bad) {
    flash.textContent = "";
    var p = document.createElement("p");
    p.className = bad ? "problem" : "notice";
    p.textContent = text;
    flash.appendChild(p);
  }

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-action")) return;
    ev.preventDefault();
    var body = new URLSearchParams(new FormData(form));
    fetch(form.getAttribute("action"), {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
    }).then(function (r) {
      return r.json().then(function (data) {
        var message = data.message || (data.error && data.error.message) || data.outcome;
        say(message, !r.ok);
      });
    }).catch(function (e) {
      say("The request failed: " + e, true);
    }).then(refresh);
  });

  function clock(seconds) {
    return new Date((seconds || 0) * 1000).toISOString().slice(11, 19) + "Z";
  }

  if (window.EventSource) {
    var source = new EventSource("/v1/events");
    source.addEventListener("open", function () {
      live.textContent = "live";
      live.className = "live on";
    });
    source.addEventListener("error", function () {
      live.textContent = "live: reconnecting";
      live.className = "live off";
    });
    source.addEventListener("final", function (ev) {
      var d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      var li = document.createElement("li");
      li.className = d.failed ? "failed" : "ok";
      li.setAttribute("data-container", d.container_id);
      li.setAttribute("data-status", d.status);
      li.textContent = clock(d.finalized_at) + "  " + d.container_id + "  " + d.status +
        (d.reason ? "  " + d.reason : "");
      events.insertBefore(li, events.firstChild);
      while (events.children.length > 50) events.removeChild(events.lastChild);
      refresh();
    });
    source.addEventListener("gap", refresh);
  }
  setInterval(refresh, 5000);
  window.threadsPollerConsole = { loadedAt: Date.now(), refresh: refresh };
})();
