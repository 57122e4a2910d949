// The workspace's terminal: xterm.js attached to the repl's shell through Eval.
//
// The page asks the web server for a connect URL and token (the server gets them from lore for
// the signed-in owner's repl), then opens the WebSocket at the cluster's Eval itself, the token
// in Sec-WebSocket-Protocol (browsers cannot set headers). Bytes both ways are binary messages;
// a resize is the text message {"type":"resize","cols":C,"rows":R} (conman's control message).
//
// When the session closes with 1012 (the repl's VM restarts: a rollout; or conman stopped the
// repl there because it moved) or 1001 (Eval goes
// away), the terminal says so and connects again at once, landing on the repl's new VM. A normal
// close (1000) after the repl moved to another cluster reconnects there; a shell that exited
// waits for a key; any other loss reconnects with a growing backoff.
"use strict";
(function () {
  const root = document.getElementById("workspace");
  const owner = root.dataset.owner, slug = root.dataset.slug, csrf = root.dataset.csrf;
  const statusEl = document.getElementById("status");
  const view = document.getElementById("webview");

  document.getElementById("reload-view").addEventListener("click", () => {
    view.src = view.src; // the frame is sandboxed (an opaque origin): reload by navigating it
  });

  function setStatus(state, text) {
    statusEl.className = "status " + state;
    statusEl.textContent = text || state;
    statusEl.dataset.state = state;
  }

  if (typeof Terminal === "undefined" || typeof FitAddon === "undefined") {
    setStatus("error", "no terminal: xterm.js did not load (see the platform's log)");
    return;
  }

  const term = new Terminal({
    cursorBlink: true,
    scrollback: 5000,
    fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace',
    fontSize: 14,
    lineHeight: 1.2, // room for underscores
    theme: { background: "#111318" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  window.addEventListener("resize", () => fit.fit());

  const encoder = new TextEncoder();
  let sock = null;       // the open (or opening) session
  let failures = 0;      // connection losses in a row, for the backoff
  let waitKey = false;   // the shell exited: the next key starts a new one
  let timer = null;
  let reconnecting = false; // a session was open before: the next open is a reconnect

  // notice writes a line of the platform's own into the terminal, apart from the shell's output.
  function notice(text) {
    term.write("\r\n\x1b[1;33m[" + text + "]\x1b[0m\r\n");
  }

  function send(data) {
    if (sock && sock.readyState === WebSocket.OPEN) sock.send(data);
  }
  function sendResize() {
    send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
  }

  term.onData((d) => {
    if (waitKey) { waitKey = false; connect(); return; }
    send(encoder.encode(d));
  });
  term.onBinary((d) => { // mouse reports: one byte per character
    const b = new Uint8Array(d.length);
    for (let i = 0; i < d.length; i++) b[i] = d.charCodeAt(i) & 0xff;
    send(b);
  });
  term.onResize(sendResize);

  // handleControl receives Eval's in-band notices (switchyard.v2): when the repl's VM rolls or
  // its conman restarts, the session stays open and Eval says what happened, e.g.
  // {"type":"notice","event":"restarted","vm":"a-vm3","text":"the repl restarted on VM a-vm3:
  // this is a new shell"}. Events: reconnecting, resumed, restarted. Unknown types and events
  // are ignored, as conman ignores unknown control messages.
  function handleControl(text) {
    let msg;
    try { msg = JSON.parse(text); } catch (e) { return; }
    if (!msg || msg.type !== "notice" || typeof msg.text !== "string") return;
    notice(msg.text);
    switch (msg.event) {
      case "reconnecting":
        setStatus("reconnecting", "reconnecting to the repl");
        break;
      case "restarted":
        view.src = view.src; // the page now comes from the repl's new VM
        // fall through
      case "resumed":
        setStatus("connected", "connected");
        break;
    }
  }

  function retry(reason, delay) {
    clearTimeout(timer);
    setStatus("reconnecting", reason);
    timer = setTimeout(connect, delay);
  }

  function backoff() {
    failures++;
    return Math.min(500 * 2 ** (failures - 1), 10000);
  }

  // connectInfo asks the web server for a connect URL and token; null when signed out (said).
  async function connectInfo() {
    const resp = await fetch("/api/repls/" + owner + "/" + slug + "/connect", {
      method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf },
    });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401 || resp.status === 403) {
      setStatus("error", "signed out: " + (body.error || resp.status));
      notice("not signed in as " + owner + ": reload the page to sign in");
      return null;
    }
    if (!resp.ok) throw new Error(body.error || resp.statusText);
    return body;
  }

  let lastURL = ""; // the Eval of the last session: another one means the repl moved

  async function connect(info) {
    clearTimeout(timer);
    setStatus("connecting", "connecting");
    if (!info) {
      try {
        info = await connectInfo();
      } catch (e) {
        retry("no connect token: " + e.message, backoff());
        return;
      }
      if (!info) return;
    }
    lastURL = info.url;
    const url = new URL(info.url);
    url.searchParams.set("cols", term.cols);
    url.searchParams.set("rows", term.rows);
    // switchyard.v2 keeps the session open through VM rolls (Eval re-attaches it and sends a
    // notice); v1 is offered too for an older Eval.
    const ws = new WebSocket(url, ["switchyard.v2", "switchyard.v1", "switchyard.token." + info.token]);
    ws.binaryType = "arraybuffer";
    sock = ws;
    ws.onopen = () => {
      if (reconnecting) view.src = view.src; // the page may now come from the repl's new VM
      reconnecting = true;
      failures = 0;
      setStatus("connected", "connected");
      sendResize();
      term.focus();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === "string") handleControl(ev.data);
      else term.write(new Uint8Array(ev.data));
    };
    ws.onclose = (ev) => {
      if (sock !== ws) return;
      sock = null;
      switch (ev.code) {
        case 1000:
          shellEnded();
          break;
        case 1012:
          vmRestarted();
          break;
        case 1001:
          notice("Eval is going away (1001): reconnecting");
          retry("Eval restarting", 0);
          break;
        case 4421: // the repl moved to another cluster while Eval re-attached it
          vmRestarted();
          break;
        case 1013: { // no VM could take the repl in time
          const delay = backoff();
          notice((ev.reason || "no VM could take the repl") + ": retrying in " + (delay / 1000) + " s");
          retry("no VM", delay);
          break;
        }
        default: {
          const delay = backoff();
          notice("connection lost (" + ev.code + (ev.reason ? " " + ev.reason : "") + "): reconnecting in " + (delay / 1000) + " s");
          retry("reconnecting", delay);
        }
      }
    };
  }

  // vmRestarted handles 1012: the repl's VM restarts (a rollout), or conman stopped the repl
  // there because it moved to another cluster. A move shows as a new Eval URL from lore.
  async function vmRestarted() {
    let info = null;
    try { info = await connectInfo(); } catch (e) { /* reconnect as for a restart */ }
    if (info && info.url !== lastURL) {
      notice("the repl moved to another cluster: reconnecting");
      connect(info);
      return;
    }
    notice("the VM is restarting (1012): reconnecting");
    if (info) connect(info);
    else retry("VM restarting", 0);
  }

  // shellEnded handles a normal close: the shell exited, or its container stopped because the
  // repl moved to another cluster (conman closes either way with 1000). A move shows as a new
  // Eval URL from lore: then connect there at once; else wait for a key.
  async function shellEnded() {
    let info = null;
    try { info = await connectInfo(); } catch (e) { /* decide as for an exit */ }
    if (info && info.url !== lastURL) {
      notice("the repl moved to another cluster: reconnecting");
      connect(info);
      return;
    }
    setStatus("ended", "shell exited");
    notice("the shell exited; press any key for a new one");
    waitKey = true;
  }

  // For tests and debugging: the terminal's text and its connection state.
  window.switchyardWorkspace = {
    term,
    notice,
    handleControl,
    text() {
      const b = term.buffer.active, lines = [];
      for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true));
      return lines.join("\n");
    },
    state: () => statusEl.dataset.state,
  };

  connect();
})();
