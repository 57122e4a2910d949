// The operator console: refresh the server-rendered tables every second and run the actions
// (roll a VM, restart Eval, move a repl) without leaving the page, so their effect shows live.
"use strict";
(function () {
  const root = document.getElementById("console");
  const csrf = root.dataset.csrf;
  const state = document.getElementById("state");
  const log = document.getElementById("log");

  function note(text, isError) {
    const li = document.createElement("li");
    li.textContent = new Date().toLocaleTimeString() + "  " + text;
    if (isError) li.className = "error";
    log.prepend(li);
    while (log.children.length > 8) log.lastChild.remove();
  }

  async function refresh() {
    try {
      const resp = await fetch("/console/state", { credentials: "same-origin", cache: "no-store" });
      if (resp.status === 401) { location.href = "/console/signin"; return; }
      if (resp.ok) state.innerHTML = await resp.text(); // server-rendered, escaped by html/template
    } catch (e) {
      // The platform may be stopping; try again on the next tick.
    }
  }
  setInterval(refresh, 1000);

  // Actions: forms with class "action" post to /console/actions/<data-action>.
  document.addEventListener("submit", async (ev) => {
    const form = ev.target;
    if (!form.classList.contains("action")) return;
    ev.preventDefault();
    const body = new URLSearchParams(new FormData(form, ev.submitter));
    const action = form.dataset.action;
    note(action + " " + [...body.values()].join(" ") + " …");
    try {
      const resp = await fetch("/console/actions/" + action, {
        method: "POST", credentials: "same-origin", body,
        headers: { "X-CSRF-Token": csrf },
      });
      const out = await resp.json().catch(() => ({ error: resp.statusText }));
      if (resp.ok) note(out.message);
      else note(action + " failed: " + (out.error || resp.status), true);
    } catch (e) {
      note(action + " failed: " + e.message, true);
    } finally {
      refresh();
    }
  });
})();
