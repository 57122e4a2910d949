// Package process is the Linux conman.Runtime: each container is a process tree in its own
// namespaces and cgroups, started and entered through a small init of our own.
//
// # What a container is
//
// Start launches the container's init with CLONE_NEWPID|NEWNS|NEWUTS|NEWIPC (and NEWNET when
// Spec.Network is set). The init is PID 1 of the container; it
//
//   - makes the mount tree private, mounts a fresh /proc and a new devpts instance on /dev/pts
//     (newinstance,ptmxmode=0666) with /dev/ptmx bound to it, so ttys inside are the
//     container's own; sets the hostname (Spec.Hostname, default the container ID); brings up
//     lo in a private network namespace;
//   - sets its oom_score_adj to -1000, so the memory limit kills the repl's processes, not it;
//   - starts Spec.Command in Spec.Dir with the container's environment (PATH, HOME, HOSTNAME,
//     PORT, then Spec.Env), stdout and stderr appended to output.log (what Attach follows),
//     which starts over at Config.MaxOutputBytes (16 MiB) so a chatty repl cannot fill the disk;
//   - reaps every zombie, forwards SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to the main process,
//     and on SIGTERM sends SIGTERM to everything (SIGHUP to terminals) and exits when all is
//     gone; when the main process exits the container exits with its code;
//   - listens on a SOCK_SEQPACKET socket (init.sock in the container's state directory) for
//     Exec: it opens the pty (or pipes) inside the container, starts the process there and
//     passes the descriptors back over the socket (SCM_RIGHTS). Exec therefore needs no setns
//     and no cgo, and works the same for a recovered container.
//
// Before the init runs anything it waits for its configuration on a pipe; the runtime writes it
// only after putting the init's pid into the container's cgroups, so nothing escapes the limits.
// That split is also what makes warm inits possible: the runtime keeps Config.WarmInits (default
// 2) inits already started in fresh namespaces, and Start hands one its configuration (hostname,
// command, output file) instead of exec'ing a new one, which removes the exec and Go start-up
// from a cold start. Containers with Spec.Network, and Isolation None, always start a new init.
//
// # Why the init is this binary (and how to embed it)
//
// The init is the running binary itself, re-executed through /proc/self/exe with a marker in
// its environment (the docker "reexec" pattern). This keeps deployment to one file and needs no
// C toolchain. The package's own init function takes over a process that carries the marker,
// before the importing packages' init functions and main run, so an embedding binary cannot
// accidentally run its main (a server, a test suite) as a container's init. Calling Init first
// thing in main (and in TestMain) is still the documented contract:
//
//	func main() {
//		process.Init() // returns at once unless this process is a container's init
//		...
//	}
//
// Where the runtime must not re-execute its own binary (a plugin host, a binary that is not
// statically built), point Config.InitPath at any small program importing this package, such as
// conman/process/cmd/conman-init. The init pre-creates its OS threads and the pids limit gets
// 12 extra slots for them, because a Go program that cannot create a thread dies: a repl that
// exhausts Limits.Pids sees fork fail, and its container keeps working.
//
// # Cgroups
//
// With cgroup v2 (<CgroupRoot>/cgroup.controllers exists) a container gets
// <CgroupRoot>/<CgroupParent>/<id> with memory.max (and memory.swap.max 0), cpu.max and
// pids.max; with v1 it gets that directory under each of the memory, cpu, cpuacct and pids
// controllers (memory.limit_in_bytes and memsw, cpu.cfs_quota_us, pids.max). Inspect reads usage
// (CPU time, memory, pids) and the OOM-kill counter from there. Exits remove the cgroups after
// killing anything left in them.
//
// # Recovery
//
// Each container's directory under Config.StateDir holds state.json (spec, port, pid and the
// pid's start time from /proc/<pid>/stat), output.log, init.sock and, once the init exits,
// exit.json with its exit code. New reads them back: a container whose pid is alive with the
// same start time (not a reused pid) is watched again (pidfd) and served; Exec reaches it through
// its socket. The init does not depend on the runtime staying alive: it runs in its own session,
// and a conman that crashes or restarts leaves its containers running. Close stops watching
// and leaves them running on purpose.
//
// # The unprivileged fallback
//
// Without root (or where clone(2) refuses namespaces) Isolation Auto runs each container as a
// plain process tree: same init, no namespaces, no cgroups, a child subreaper instead of PID 1,
// processes killed with the init (Pdeathsig). The first fallback is logged; Status.Isolated is
// false and Status.Isolation says why. Isolation None forces it; Namespaces forbids it.
//
// This is isolation for well-behaved neighbours, not a security sandbox: see the conman package
// documentation for what production should put underneath (gVisor, Firecracker, Docker).
package process
