// Package oci is a conman.Runtime that runs repls' containers through an OCI runtime binary —
// runc, crun, or gVisor's runsc — from bundles it writes, for platforms that run repls on the
// runtimes they already trust.
//
//	rt, err := oci.New(oci.Config{Binary: "runsc", Args: []string{"--platform=systrap"},
//		StateDir: "/var/lib/conman-oci", Image: "/var/lib/images/base@latest"})
//
// # A container
//
// Each container gets:
//
//   - a root file system: the image (Spec.Rootfs, Spec.Image or the Config's) read-only, as
//     the lower layer of an overlay whose upper layer only holds mount points; the repl's files
//     are Spec.Dir, bound read-write at the same path (without Dir, a directory of the
//     container's state at /home/repl), /tmp is a tmpfs of Config.TmpBytes, Spec.Mounts are
//     bound nosuid,nodev;
//   - a user namespace with 65536 uids and gids of its own (UIDBase + slot*65536), root inside
//     and nobody on the host; slots are reserved host-wide in SlotDir, in the same format as
//     conman/process, so the two never hand out one range twice. Spec.Dir is given to that
//     range (entries owned outside it are moved into it, keeping their offset). With runsc the
//     sentry and its gofer run in that user namespace: the sandbox is an unprivileged host user
//     and the repl's files belong to its range;
//   - new pid, mount, uts, ipc, network (loopback only) and, with runc, cgroup namespaces;
//   - Docker's defaults, tightened: its capabilities less NET_RAW and MKNOD, its seccomp profile
//     less ptrace (DefaultSeccomp), masked and read-only /proc paths, no_new_privs, a read-only
//     root;
//   - cgroup limits (v1 or v2) in a cgroup of ours, <CgroupParent>/<id>, with the runtime's own
//     cgroup inside it: usage and the OOM-kill count are read there, also after the exit.
//
// The container's PID 1 is the image's /bin/sh (it must have one), copied execute-only so that
// the repl, the same uid, cannot ptrace it or follow its /proc entries (exec of a file one may
// not read makes a process non-dumpable), running a few lines that start Spec.Command, reap
// orphans, pass SIGTERM to every process and exit with the main process's code. Start first checks that Spec.Command[0] exists in the container's file system, so a
// missing program fails Start instead of becoming exit code 127.
//
// # Exits and recovery
//
// Start runs `<runtime> run` in the foreground under a small /bin/sh on the host, in its own
// session (the "shim"): the runtime returns the container's exit code and the shim writes it
// to the container's state directory. A restarted conman reads state.json back, watches the
// shims still running (pidfd, with the start time against pid reuse), asks the runtime (`state`)
// for the init's pid, and learns the exit code of containers that ended meanwhile from their
// file. Close leaves the containers running on purpose.
//
// Stop sends SIGTERM through `<runtime> kill`, waits up to the grace period, then SIGKILL.
// Attach follows the container's output file (stdout and stderr of the main process, started
// over past Config.MaxOutputBytes).
//
// # Exec
//
// Exec runs `<runtime> exec --process` with the container's capabilities, environment and
// working directory; the runtime waits for the process and exits with its code. With a TTY the
// runtime's own terminal is a host pty of ours: runc relays it to a pty in the container and
// follows its size; runsc gives it to the sandbox as the terminal. (runc 1.1 accepts a console
// socket only with --detach, which would leave nobody to report the exit code.) Signal goes to
// the process inside: runc reports its host pid, runsc its pid in the sandbox (`runsc kill
// --pid`).
//
// # The web port
//
// Runtime implements conman.Dialer: DialContainer connects to the container's loopback from
// inside its network namespace (internal/netns), so the repl's web port is never exposed on the
// VM. With runc that is the namespace runc made (through the init's pidfd). With runsc it is a
// namespace the Runtime makes and pins under RunDir, and runsc runs with --network=host inside
// it: gVisor's own network stack (--network=sandbox) keeps the loopback inside the sandbox,
// where nothing outside can reach it. --network=host passes socket calls to the host kernel, in
// a namespace with nothing but a loopback.
//
// # gVisor
//
// runsc needs a platform this host supports: systrap, its default, or ptrace (KVM needs
// /dev/kvm), and a gVisor from 2026 or later: earlier ones apply the OCI seccomp profile to the
// container's init and its children only, not to `runsc exec`'d processes (google/gvisor#12692),
// and refuse a user namespace in the spec. Debian 12's runsc (20221219) is such a one; the
// package's tests run a build of gVisor's Go branch (see .ci/run). The Runtime adds
// --oci-seccomp. gVisor's seccomp returns EPERM for every errno rule, so clone3 is traced
// instead (ENOSYS with no tracer) and C libraries fall back to clone. gVisor does not make a
// process non-dumpable when it execs a file it may not read, so the repl's processes lack
// CAP_AUDIT_WRITE (unused: gVisor has no audit), which keeps them from the /proc entries of the
// init and of the main command, which hold it. Inside the sandbox uid_map is an identity map of
// the sentry's own root user namespace; on the host the sentry runs as the container's range.
//
// # Images
//
// Spec.Image (or Config.Image) names a local OCI image layout, "<dir>[@<tag or manifest
// digest>]". The Runtime unpacks each image once per VM under StateDir/images/<manifest
// digest>, checking every blob's digest, applying whiteouts, keeping every path inside the root
// (os.Root) and skipping device nodes; containers share it read-only. WriteImage writes a
// directory as a one-layer image, and BusyboxRootfs makes a minimal root from a static busybox:
// that is how a VM makes a base image without a registry.
//
// A platform with a registry pulls into a layout with go-containerregistry and names it here:
//
//	img, err := crane.Pull("registry.example.com/repl-base:2026-12")
//	p, err := layout.Write("/var/lib/images/base", empty.Index)
//	err = p.AppendImage(img, layout.WithAnnotations(map[string]string{
//		"org.opencontainers.image.ref.name": "2026-12"}))
//	// Spec.Image: "/var/lib/images/base@2026-12"
package oci
