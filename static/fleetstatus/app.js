/* fleetstatus pages: local times, polite polling, focus kept across live refreshes.
 *
 * No inline scripts and no eval (the Content-Security-Policy forbids both), so the visibility rule
 * for polling lives here instead of in an hx-trigger filter: a poll runs every 10 s while the tab
 * is visible and at most once a minute while it is hidden; coming back refreshes at once.
 */
(function () {
  "use strict";

  var HIDDEN_POLL_MS = 60000;
  var lastPoll = Date.now();
  var clockOffset = 0; // server time minus browser time, so "3 min ago" agrees with the server

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  // Same wording as devices/templatetags/fleetstatus.py: ago().
  function spanText(seconds) {
    if (seconds < 60) return Math.floor(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min";
    if (seconds < 48 * 3600) return Math.floor(seconds / 3600) + " h";
    return Math.floor(seconds / 86400) + " d";
  }

  function relative(date, nowMs, mode) {
    var seconds = (nowMs - date.getTime()) / 1000;
    if (mode === "for") return seconds < 5 ? "for a moment" : "for " + spanText(Math.max(seconds, 0));
    if (Math.abs(seconds) < 5) return "just now";
    var text = spanText(Math.abs(seconds));
    return seconds < 0 ? "in " + text : text + " ago";
  }

  function localDateTime(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function localClock(d) {
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  var zone = "";
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
  } catch (e) {
    zone = "";
  }

  function syncClock(root) {
    var live = root.querySelector ? root.querySelector("[data-server-now]") : null;
    if (!live && root.matches && root.matches("[data-server-now]")) live = root;
    if (!live) return;
    var server = Date.parse(live.getAttribute("data-server-now"));
    if (!isNaN(server)) clockOffset = server - Date.now();
  }

  function renderTimes(root) {
    var nowMs = Date.now() + clockOffset;
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var el = times[i];
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) continue;
      var exact = localDateTime(d) + (zone ? " (" + zone + ")" : "");
      if (el.hasAttribute("data-rel")) {
        el.textContent = relative(d, nowMs, el.getAttribute("data-rel") || "ago");
        el.title = exact;
      } else if (el.hasAttribute("data-clock")) {
        el.textContent = localClock(d);
        el.title = exact;
      } else if (el.hasAttribute("data-abs")) {
        el.textContent = localDateTime(d);
        el.title = zone;
      }
    }
  }

  function isPoll(elt) {
    return elt && elt.hasAttribute && elt.hasAttribute("data-poll");
  }

  // Polling: skip while hidden unless a minute has passed.
  document.addEventListener("htmx:beforeRequest", function (evt) {
    if (!isPoll(evt.detail.elt)) return;
    if (document.visibilityState !== "visible" && Date.now() - lastPoll < HIDDEN_POLL_MS) {
      evt.preventDefault();
      return;
    }
    lastPoll = Date.now();
  });

  // A failed refresh leaves the last data on screen, marked as not current, until one succeeds.
  function markPollError(evt, failed) {
    if (!isPoll(evt.detail.elt)) return;
    var live = document.getElementById("live");
    if (live) live.toggleAttribute("data-poll-error", failed);
  }
  document.addEventListener("htmx:responseError", function (evt) { markPollError(evt, true); });
  document.addEventListener("htmx:sendError", function (evt) { markPollError(evt, true); });

  // Keep keyboard focus on "the same" link when the live region is replaced under it.
  var focusHref = null;
  document.addEventListener("htmx:beforeSwap", function (evt) {
    var active = document.activeElement;
    var target = evt.detail.target;
    focusHref = active && target && target.contains(active) && active.getAttribute ? active.getAttribute("href") : null;
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!focusHref) return;
    var live = document.getElementById("live");
    var links = live ? live.querySelectorAll("a[href]") : [];
    for (var i = 0; i < links.length; i++) {
      if (links[i].getAttribute("href") === focusHref) {
        links[i].focus({ preventScroll: true });
        break;
      }
    }
    focusHref = null;
  });

  document.addEventListener("htmx:load", function (evt) {
    syncClock(evt.detail.elt);
    renderTimes(evt.detail.elt);
  });

  function start() {
    syncClock(document);
    renderTimes(document);
    // Relative times age between refreshes (and on pages a poll is skipping while hidden).
    window.setInterval(function () { renderTimes(document); }, 15000);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
