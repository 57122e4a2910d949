// Package conman is switchyard's container manager: the Runtime interface that runs repls'
// containers, and the per-VM Server that the session proxy and the hosting proxy talk to.
//
// # What runs where
//
// Every conman VM runs one Server over one Runtime. A repl gets one container on the VM that
// placement assigned it to. The container's main process (Spec.Command, e.g. the repl's web app)
// starts with the container; an attach runs the repl's shell (Spec.Shell, default /bin/sh)
// inside the same container on a fresh pty. conman/process is the Linux runtime (namespaces,
// cgroups, a pty per attach); conman/conmantest is the conformance suite any other backend
// (Docker, Firecracker, gVisor) must pass.
//
// # A repl is hostile
//
// conman/process, the default runtime, is a sandbox: a user namespace with an id range of its
// own per container, pivot_root into a read-only root, its own network namespace, dropped
// capabilities, seccomp and cgroup limits (see its package documentation and
// docs/security.md). conmantest.RunIsolation is the attack suite every runtime must pass. What
// it does not stop is a kernel exploit; run gVisor (conman/oci with runsc) where that matters.
//
// # The HTTP contract (what the proxies call)
//
// The Server does not listen; serve it with an http.Server on the VM's address (placement's
// VM.Addr). Every request must carry HeaderCredential (Switchyard-Credential) equal to
// Config.Credential — compared in constant time — or gets 401 with a JSON error and
// HeaderError "unauthorized" (so a proxy can tell conman's 401 from a hosted app's).
//
//   - GET /v1/repls/{id}/attach[?cols=N&rows=M]: a WebSocket to the repl's shell on a pty, the
//     container started first if needed. Before the upgrade: 400 for a bad id or size, 503 with
//     a JSON error when the VM drains or the repl cannot start here (the session proxy retries on
//     another VM). After it: binary messages carry pty bytes both ways; a text message
//     {"type":"resize","cols":N,"rows":M} resizes the pty (other types are ignored, malformed
//     JSON closes with 1007). conman closes with 1000 when the shell or its container exits on
//     its own, 1012 when conman stopped the repl (it moved, or a proxy fenced it), when the VM
//     drains or conman restarts, 1011 on an internal error, 4000 (CloseTakenOver) when a resume
//     took the shell to another connection, 4001 (CloseResumeHere) when an upgrade in place
//     handed the shell to the successor while this connection was still in its handshake:
//     resume it on the same VM (live connections are handed over and see no close).
//   - Resumable sessions: the 101 carries HeaderSession (Switchyard-Session), the shell's session
//     id (128 random bits, URL-safe). Each shell counts its output offset: the bytes of pty
//     output sent as binary-message payload since the shell started, across resumes. A
//     connection that breaks without a close frame (TCP ended or reset) detaches the shell and
//     keeps it Config.ResumeWindow (60 s); a close frame from the client, any code, kills it.
//     GET /v1/repls/{id}/attach?resume=<session>&offset=<n> re-attaches the shell: conman sends
//     the output from offset n that it still holds (the last Config.OutputBuffer bytes, 64 KiB),
//     then live output. If n is older than that, the replay starts at the oldest byte held and
//     HeaderResumeGap (Switchyard-Resume-Gap) says how many bytes were lost. n past the output
//     produced or a missing offset: 400 (ErrorInvalid). An unknown, ended or expired session,
//     or another repl's: 404 with HeaderError "session-gone". A resume of a session still
//     attached closes the other connection with 4000. At most Config.MaxDetachedPerRepl (16)
//     shells of a repl stay detached; past it the oldest is killed. A drain or a stop kills
//     detached shells too: nothing resumes across a container stop.
//   - Hosting: any request with HeaderRepl (Switchyard-Repl: <id>) is forwarded to that repl's
//     web port, method, path, query, body, Host and X-Forwarded-* unchanged, WebSocket upgrades
//     included, every Switchyard-* header stripped. The repl is started if needed and the
//     request waits up to Config.PortWait for its port to accept. conman answers 502 with a JSON
//     error and HeaderError set to ErrorStart or ErrorUnreachable when it cannot start the repl
//     or the port does not answer, 503 (ErrorDraining) while draining, 400 (ErrorInvalid) for a
//     malformed id.
//   - GET /healthz: 200 {"status":"ok"}, or 503 while draining. GET /v1/repls lists the
//     containers' Status (state, pid, port, usage, isolation) for operators; DELETE
//     /v1/repls/{id} stops and removes a repl's container (204, or 404), e.g. after the repl
//     moved to another cluster.
//
// # Ports
//
// The Server assigns each repl a web port from Config.Ports (default 20000-29999) and exports
// PORT and HOST to the repl: the app listens on HOST:PORT. With a runtime that implements
// Dialer (conman/process's sandbox), HOST is the container's own 127.0.0.1 and the Server dials
// inside the container; otherwise HOST is Config.ReplHost, the port must be free there, and
// several VMs sharing a machine need their own ReplHost or disjoint port ranges. Every
// Switchyard-* header or trailer of an app's response is removed: only conman speaks for conman.
//
// # Lifecycle
//
// New adopts the containers the Runtime recovered (a restarted conman keeps its repls running:
// conman/process persists pid, pid start time, port and spec per container) and, with
// Config.Placement, starts the agent: it registers Config.VM, heartbeats every
// HeartbeatInterval with the running repls and their summed usage, and registers again if
// placement forgot the VM. A container that exits without the Server stopping it (the repl ran
// `kill 1`, was OOM-killed, its app crashed) is logged, counted, released in placement and
// removed, so the next attach or request starts a fresh one. A repl that placement has assigned
// to another VM for Config.OrphanGrace while it runs here (a split brain) is stopped.
//
// Shutdown drains the VM for a rollout: new attaches and requests get 503, placement marks the
// VM draining, attach sessions close with 1012 so clients reconnect elsewhere, every container
// gets SIGTERM and Config.StopGrace before SIGKILL, and the repls are released. Close instead
// leaves the containers running for the next conman process to adopt (an in-place upgrade).
//
// # Upgrade in place
//
// A new conman binary takes over from the running one on the same VM without a client seeing
// a close. The new process connects to a root-only unix socket the old one listens on (in the
// VM's state directory) and asks to take over; the old one checks the request
// (AcceptSuccessor), stops serving requests (duplicating its listener first), then
// Server.Handoff sends, with SCM_RIGHTS: every shell's process (for conman/process: the
// connection to the container's init, which kills the shell when it hangs up, and the pty
// master), its output ring and offset, every live attach connection stopped between two
// WebSocket frames with the bytes read but not consumed, and the listener. The new process
// calls ReceiveHandoff, creates its Runtime over the same state, and New with Config.Inherit:
// it adopts the containers, the shells and the connections and serves the listener; the old
// process exits. A shell keeps its cwd, its jobs and its recent output; its peer (Eval, then the
// client) sees a pause. Runtimes whose processes are not Handoffers (conman/oci) lose their
// shells: conman kills them and closes their attaches with 1012, as a restart does. A
// connection caught in a write that does not finish within two seconds is cut instead, and its
// peer resumes the session by id. Hosting requests in flight on the old process are answered
// before it hands over (bounded by the caller's context); forwarded app WebSockets are not
// handed over.
//
// # Metrics
//
// With Config.Registerer: switchyard_conman_containers (gauge), switchyard_conman_container_starts_total{result},
// switchyard_conman_container_start_seconds (histogram), switchyard_conman_container_exits_total{reason="stopped"|
// "unexpected"}, switchyard_conman_attach_sessions (gauge), switchyard_conman_forward_errors_total{reason} (the
// HeaderError values), switchyard_conman_heartbeats_total{result}, and for resumable shells
// switchyard_conman_shells_detached (gauge), switchyard_conman_shells_detached_total,
// switchyard_conman_shells_resumed_total, switchyard_conman_shell_resumes_refused_total{reason}
// and switchyard_conman_shells_expired_total.
//
// # A VM in a few lines
//
//	func main() {
//		process.Init() // the binary is also each container's init (see conman/process)
//		rt, err := process.New(process.Config{StateDir: "/var/lib/conman"})
//		...
//		srv, err := conman.New(ctx, conman.Config{
//			Runtime: rt, Credential: os.Getenv("CONMAN_CREDENTIAL"),
//			Spec: func(ctx context.Context, repl string) (conman.Spec, error) {
//				return conman.Spec{Command: []string{"/srv/demo-app"}, Dir: "/home/repls/" + repl}, nil
//			},
//			ReplHost: "10.0.0.11", Placement: placementClient,
//			VM: placement.VM{ID: "vm-11", Addr: "http://10.0.0.11:8600", Capacity: placement.Resources{Containers: 500}},
//		})
//		...
//		hs := &http.Server{Addr: "10.0.0.11:8600", Handler: srv}
//		go hs.ListenAndServe()
//		<-sigterm
//		srv.Shutdown(ctx) // drain: 1012 to sessions, stop containers, release repls
//		hs.Shutdown(ctx)
//		rt.Close()
//	}
package conman
