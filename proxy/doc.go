// Package proxy holds switchyard's two data-plane proxies. Both are http.Handlers that never
// bind a port: the caller serves them, and drains them with their own Shutdown after
// http.Server.Shutdown, because the standard library does not track the hijacked (WebSocket)
// connections they hold.
//
// # Sessions: the workspace session proxy (Eval)
//
// Sessions turns a client's WebSocket with a connect token into a session with the repl's shell
// on the conman VM that runs it: verify the token (401 before any upgrade), ask placement for the
// VM, dial conman's attach endpoint with the internal credential, retrying on other VMs before
// the client has seen a byte, then relay both ways. Splice mode copies raw bytes between the TCP
// connections (splice(2) on Linux: the cheapest relay, about 11 KiB per idle session); Frame mode
// terminates WebSocket on both legs for per-message limits and keepalives (about 27 KiB). Every
// attempt ends in exactly one outcome stage, the basis of the session-success SLO. Shutdown keeps
// live sessions through a grace period of hours or days; ListenReusePort lets the next process
// take new sessions meanwhile. The Sessions type's documentation is the full manual.
//
// # Hosting: web traffic by Host
//
// Hosting maps a request's Host — <slug>.<owner>.<zone>, <id>.id.<zone>, or a verified custom
// domain — to the repl, asks placement for its VM, and reverse-proxies to the repl's web port
// through conman, WebSocket upgrades, streaming bodies and trailers included. Failures answer
// clearly: 404 for a host no repl serves, 502 with a request id (also in the log line) when the
// repl cannot start, 503 when the directory or placement is down. Put tombstone's Forwarder in
// front of it so requests for repls that moved to another cluster are forwarded there. The
// Hosting type's documentation is the full manual.
//
// Both proxies declare what they need as small interfaces — Placer, TokenVerifier, Directory —
// satisfied by the in-process types and the HTTP clients of lore and placement alike.
package proxy
