// Package process is switchyard's own Linux conman.Runtime: a sandbox for hostile code that
// needs nothing installed (no runc, no cgo). Each container is a process tree started and
// entered through a small init of our own.
//
// # The sandbox
//
// Start clones the container's init into new user, PID, mount, UTS, IPC and network
// namespaces. The layers, in the order they are built, each failing closed (docs/security.md
// has the threat model and the anchor each layer follows):
//
//   - ids: a root runtime maps the container's uids and gids 0-65535 to a range of its own on
//     the VM (Config.UIDBase + slot×65536, slots reserved host-wide in Config.SlotDir); an
//     unprivileged runtime maps its own uid alone;
//   - files: a tmpfs root holding the VM's /usr, /bin, /sbin, /lib* (or Spec.Rootfs) read-only,
//     a generated /etc, safe devices and a devpts of its own, a fresh /proc with runc's masked
//     paths, a read-only /sys, a private /tmp, Spec.Mounts, and Spec.Dir (at its VM path) as
//     the only writable VM directory; pivot_root, then / is read-only;
//   - network: only lo. The web app listens on 127.0.0.1:PORT (HOST is set so), and the conman
//     Server reaches it through DialContainer, inside the namespace;
//   - cgroups: memory, CPU and pids limits (v2, or the v1 controllers), and a cgroup namespace
//     rooted at the container's cgroups;
//   - privileges: capabilities cut to KeptCapabilities, no_new_privs, and a seccomp filter at
//     least as strict as Docker's default profile.
//
// The init is non-dumpable, answers its control socket only from outside the container, and
// starts every process from one thread that carries the last three layers.
//
// Isolation None runs plain processes with the runtime's privileges instead: for trusted code
// only, never chosen silently. Where the sandbox cannot be built, Start fails and says why.
//
// # The init
//
// The init is the running binary itself, re-executed through /proc/self/exe with a marker in
// its environment. The package's init function takes over such a process before the importing
// program's own init and main run. Calling Init first thing in main (and in TestMain) is the
// documented contract:
//
//	func main() {
//		process.Init() // returns at once unless this process is a container's init
//		...
//	}
//
// Config.InitPath points elsewhere when the binary must not re-execute itself (for example at
// conman/process/cmd/conman-init). The runtime opens everything the init needs on the VM (the
// control socket, the exit file, the output file, and the bind sources as detached mounts), so
// the init needs no access to the state directory.
//
// # Recovery
//
// Each container's directory under Config.StateDir holds state.json (spec, pid and its start
// time, id slot), output.log (what Attach follows, capped at Config.MaxOutputBytes), init.sock
// and exit.json. A new Runtime over the same StateDir watches the containers still running again
// (pidfd) and serves Exec through their sockets; Close leaves them running on purpose.
package process
