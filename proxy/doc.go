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
// connections (splice(2) on Linux: the cheapest relay, about 10 KiB per idle session, 5 KiB on
// an event loop, SessionsConfig.EventLoops); Frame mode terminates WebSocket on both legs for
// per-message limits and keepalives (about 27 KiB). Every
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
// # Deploys without a refused or dropped connection
//
// A proxy process is replaced by starting the new one beside it on the same address, never by
// stopping the old one first:
//
//  1. The new process listens with ListenReusePort (SO_REUSEPORT) and signals readiness once
//     it returns: from then on the kernel queues connections for it, Accept or not.
//  2. The old process stops accepting with Handover.Shutdown. Its listener closes; with
//     net.ipv4.tcp_migrate_req = 1 the connections queued on it, and handshakes in progress,
//     move to the new listener (ListenReusePort has the kernel's conditions). Every connection it
//     had already accepted still gets its request answered — sessions in setup included — with
//     keep-alives off, and only then does it call http.Server.Shutdown.
//  3. The old process drains its live sessions with Sessions.Shutdown(graceCtx), hours or days,
//     and exits.
//
// Calling http.Server.Shutdown directly in step 2 loses connections: net/http closes, without
// an answer, any connection whose request it reads after Shutdown began, including one it
// accepted a moment before its listener closed. The client sees EOF; the new process never saw
// the connection. On a loaded 2-core machine that lost one connection in 7 of 60 handovers of
// TestSessionsReusePortTwoProcesses (about one in 1,500 connections handed over); the test now
// also makes that race certain, with a connection accepted before the handover whose request
// comes after.
//
// Without tcp_migrate_req (ReusePortMigration reports it; it needs CAP_NET_ADMIN to set, per
// network namespace) step 2 resets the few connections that reach the old listener's queue in
// the instant it closes: clients see ECONNRESET and must retry. There is no loss-free way round
// that with close(2) alone; set the sysctl.
//
//	ln, err := proxy.ListenReusePort(ctx, "tcp", ":8443")
//	if err != nil { … }
//	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
//	h := proxy.NewHandover(srv, ln)
//	go h.Serve()
//	ready() // tell the deployer: the old process may stop now
//	<-sigterm
//	err = h.Shutdown(ctx)                         // stop accepting, answer every accepted connection
//	err = errors.Join(err, sessions.Shutdown(grace)) // then keep live sessions to the end
//
// Both proxies declare what they need as small interfaces — Placer, TokenVerifier, Directory —
// satisfied by the in-process types and the HTTP clients of lore and placement alike.
package proxy
