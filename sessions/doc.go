// Package sessions is the workspace session proxy (Eval): an http.Handler that turns a client's
// WebSocket with a connect token into a session with the repl's shell on the conman VM that
// runs it.
//
// For each session it verifies the token (401 before any upgrade), asks placement for the VM,
// dials that VM's conman attach endpoint with the internal credential, retrying on other VMs
// before the client has seen a byte, then relays both ways until either side closes. Splice
// mode relays raw bytes between the two TCP connections (splice(2) on Linux, optionally on event
// loops: Config.EventLoops); Frame mode terminates WebSocket on both legs for per-message limits
// and keepalives. Every attempt ends in exactly one outcome stage (StageOK, StageToken, …), the
// basis of a session-success SLO.
//
// A client that speaks SubprotocolV2 keeps its session when conman's side ends under it (a VM
// roll, conman dying, restarting or upgrading in place): the proxy resumes the same shell where
// conman still holds it, or places the repl again and attaches a new shell, within
// Config.ReattachTimeout, and tells the client in band with a Notice.
//
// A Proxy never binds a port. Serve it with an http.Server — behind a handover.Server for
// deploys without a lost connection — and drain it with Proxy.Shutdown after the server's own
// shutdown: the standard library does not track hijacked connections, and a session may run
// for hours. The Proxy type's documentation describes the flow, the modes and the metrics.
package sessions
