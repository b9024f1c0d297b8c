// paysaga console: live saga page. Progressive enhancement only: every page works without it.
// Re-reads the saga's live part every 2 s and swaps it in when it changed.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.src) { return; }
  var busy = false;
  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(live.dataset.src, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        // The fragment is our own server-rendered HTML (escaped by the templates).
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.body.innerHTML;
        if (fresh !== live.innerHTML) { live.innerHTML = fresh; live.dataset.updated = String(Date.now()); }
      })
      .catch(function () {})
      .then(function () { busy = false; });
  }
  setInterval(refresh, 2000);
})();
