// The saga console's only script (no build step, nothing fetched from elsewhere).
// 1. Auto-refresh: an element with data-refresh-url is replaced every data-refresh-seconds by the
//    server-rendered (escaped) fragment at that URL, while the page is visible and the box is ticked.
// 2. Confirmation: a form with data-confirm asks before it is sent (the server also requires its
//    ticked confirmation box, a reason, the operator's name and the CSRF token).
(function () {
  "use strict";

  function enabled() {
    var box = document.getElementById("auto-refresh");
    return !box || box.checked;
  }

  function refresh(el) {
    if (!enabled() || document.hidden || el.contains(document.activeElement) && document.activeElement !== document.body) {
      return;
    }
    fetch(el.getAttribute("data-refresh-url"), {credentials: "same-origin", headers: {"X-Requested-With": "saga-console"}})
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/console/login?next=" + encodeURIComponent(location.pathname + location.search)); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          el.innerHTML = html;
          el.setAttribute("data-refreshed-at", String(Date.now()));
        }
      })
      .catch(function () { /* the next tick tries again */ });
  }

  function start() {
    var live = document.querySelectorAll("[data-refresh-url]");
    Array.prototype.forEach.call(live, function (el) {
      var seconds = parseFloat(el.getAttribute("data-refresh-seconds") || "5");
      window.setInterval(function () { refresh(el); }, Math.max(1, seconds) * 1000);
    });
    Array.prototype.forEach.call(document.querySelectorAll("form[data-confirm]"), function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.getAttribute("data-confirm") + "?")) { ev.preventDefault(); }
      });
    });
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
