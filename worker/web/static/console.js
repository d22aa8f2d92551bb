// threads-poller console: progressive enhancement of the server-rendered pages (no build step).
// Live: final states arrive over /v1/events (Server-Sent Events); each one, and a tick every 5 s,
// fetches this page again (HTML made and escaped on the server) and merges its live regions
// ([data-live][id]) into the page in place: table rows are matched by data-key and only the
// cells that changed are rewritten. A cell holding the focus, a form control or selected text is
// left alone; rows are not added, moved or removed while the pointer, the focus or a selection
// is in their table (that waits until it leaves), so nothing moves under the operator. Forms are
// plain: every action goes through its confirmation page. Without script the pages work as
// served, with a refresh link.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var regions = document.querySelectorAll("[data-live][id]");
  var events = document.getElementById("events");
  var live = document.getElementById("live");
  var panels = document.getElementById("panels");
  var now = document.getElementById("now");
  var pending = null;
  var refreshes = 0;
  if (!regions.length && !events) return;

  function selectionIn(el) {
    var sel = window.getSelection ? window.getSelection() : null;
    if (!sel || sel.isCollapsed || !sel.rangeCount) return false;
    var range = sel.getRangeAt(0);
    return el.contains(range.startContainer) || el.contains(range.endContainer);
  }

  function busy(el) {
    return el.matches(":hover") || el.contains(document.activeElement) || selectionIn(el);
  }

  function untouchable(cell) {
    return cell.querySelector("input, button, select, textarea") !== null ||
      cell.contains(document.activeElement) || selectionIn(cell);
  }

  function updateRow(row, next) {
    ["class", "data-status"].forEach(function (name) {
      var v = next.getAttribute(name);
      if (v === null) row.removeAttribute(name);
      else if (row.getAttribute(name) !== v) row.setAttribute(name, v);
    });
    if (row.cells.length !== next.cells.length) return;
    for (var i = 0; i < row.cells.length; i++) {
      var cell = row.cells[i];
      var fresh = next.cells[i];
      if (cell.innerHTML === fresh.innerHTML || untouchable(cell)) continue;
      cell.innerHTML = fresh.innerHTML;
      cell.className = fresh.className;
    }
  }

  function checked(row) {
    return row.querySelector("input[type=checkbox]:checked") !== null;
  }

  function mergeTable(cur, next) {
    var body = cur.tBodies[0];
    var nextBody = next.tBodies[0];
    if (!body || !nextBody) return;
    var old = {};
    Array.prototype.forEach.call(body.rows, function (r) {
      var k = r.getAttribute("data-key");
      if (k !== null) old[k] = r;
    });
    var wanted = [];
    Array.prototype.forEach.call(nextBody.rows, function (n) {
      var k = n.getAttribute("data-key");
      var row = k !== null ? old[k] : undefined;
      if (row) {
        updateRow(row, n);
        delete old[k];
        wanted.push(row);
      } else {
        wanted.push(document.importNode(n, true));
      }
    });
    var gone = Object.keys(old).map(function (k) { return old[k]; });
    if (busy(cur)) {
      // Nothing moves now: rows that left are dimmed; the rest waits for the pointer to leave.
      gone.forEach(function (r) { r.classList.add("stale"); });
      cur.setAttribute("data-waiting", "1");
      return;
    }
    cur.removeAttribute("data-waiting");
    gone.forEach(function (r) {
      if (checked(r)) { r.classList.add("stale"); wanted.push(r); } // a selection is kept
      else body.removeChild(r);
    });
    wanted.forEach(function (row, i) {
      if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
    });
  }

  function merge(doc) {
    Array.prototype.forEach.call(regions, function (cur) {
      var next = doc.getElementById(cur.id);
      if (!next) return;
      if (cur.tagName === "TABLE") { mergeTable(cur, next); return; }
      if (cur.innerHTML === next.innerHTML || busy(cur)) return;
      cur.innerHTML = next.innerHTML;
    });
    var stamp = doc.getElementById("rendered");
    if (now && stamp) now.textContent = stamp.getAttribute("data-ts");
  }

  function refresh() {
    if (pending !== null) return;
    pending = setTimeout(function () {
      pending = null;
      fetch(window.location.href, {
        credentials: "same-origin",
        headers: { Accept: "text/html" },
      }).then(function (r) {
        if (r.redirected && new URL(r.url).pathname === "/login") {
          window.location.href = "/login";
          return null;
        }
        if (live && r.status === 503) {
          live.textContent = "Redis unreachable";
          live.className = "live off";
        }
        return r.ok ? r.text() : null;
      }).then(function (text) {
        if (text === null || text === undefined) return;
        merge(new DOMParser().parseFromString(text, "text/html"));
        refreshes += 1;
        document.body.setAttribute("data-refreshes", String(refreshes));
        if (panels) panels.setAttribute("data-refreshes", String(refreshes));
      }).catch(function () { /* the next event or tick tries again */ });
    }, 200);
  }

  // What waited for the pointer or the focus to leave a table is done once it has.
  Array.prototype.forEach.call(regions, function (el) {
    el.addEventListener("mouseleave", function () {
      if (el.hasAttribute("data-waiting")) refresh();
    });
    el.addEventListener("focusout", function () {
      if (el.hasAttribute("data-waiting")) refresh();
    });
  });

  function clock(seconds) {
    return new Date((seconds || 0) * 1000).toISOString().slice(11, 19) + "Z";
  }

  if (window.EventSource) {
    var source = new EventSource("/v1/events");
    source.addEventListener("open", function () {
      if (!live) return;
      live.textContent = "live";
      live.className = "live on";
    });
    source.addEventListener("error", function () {
      if (!live) return;
      live.textContent = "live: reconnecting";
      live.className = "live off";
    });
    source.addEventListener("final", function (ev) {
      var d;
      try { d = JSON.parse(ev.data); } catch (e) { return; }
      if (events) {
        var li = document.createElement("li");
        li.className = d.failed ? "failed" : "ok";
        li.setAttribute("data-container", d.container_id);
        li.setAttribute("data-status", d.status);
        var a = document.createElement("a");
        a.href = "/containers/" + encodeURIComponent(d.container_id);
        a.textContent = d.container_id;
        li.appendChild(document.createTextNode(clock(d.finalized_at) + "  "));
        li.appendChild(a);
        li.appendChild(document.createTextNode("  " + d.status + (d.reason ? "  " + d.reason : "")));
        events.insertBefore(li, events.firstChild);
        while (events.children.length > 50) events.removeChild(events.lastChild);
      }
      refresh();
    });
    source.addEventListener("gap", refresh);
  }
  setInterval(function () { if (!document.hidden) refresh(); }, 5000);
  window.threadsPollerConsole = { loadedAt: Date.now(), refresh: refresh };
})();
