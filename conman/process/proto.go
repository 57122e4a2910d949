package process

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
)

// The protocol between the runtime and a container's init.
//
// Start: the runtime starts the init (this binary, see Init) with four extra descriptors: fd 3,
// from which the init reads an initConfig as JSON until EOF (the runtime writes it after moving
// the init into its cgroups, so nothing the container runs escapes them); fd 4, on which the
// init writes "ok" once it is ready, or an error text, then closes it; fd 5, the listening
// control socket; fd 6, exit.json, where the init records its exit code. The runtime opens all of
// them on the VM, so the init (an unprivileged uid in the sandbox) needs no access to the state
// directory, and nothing of it is visible inside.
//
// Exec: the init accepts on a SOCK_SEQPACKET unix socket in the container's state directory
// (only from peers outside the container: SO_PEERCRED).
// Each connection carries one process: the runtime sends an execRequest, the init answers an
// execResponse with the process's descriptors attached (SCM_RIGHTS: the pty master, or the
// stdin/stdout/stderr pipe ends), then sends an execExit when the process exits. The runtime may
// send execSignal messages meanwhile. Closing the connection kills the process's group.

const (
	initEnv      = "_SWITCHYARD_CONMAN_INIT"
	socketName   = "init.sock"
	stateName    = "state.json"
	exitName     = "exit.json"
	outputName   = "output.log"
	homeName     = "home"
	maxPacket    = 64 << 10
	defaultPath  = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	initArgv0    = "conman-init"
	readyMessage = "ok"
)

type initConfig struct {
	ID       string   `json:"id"`
	Hostname string   `json:"hostname"`
	Command  []string `json:"command,omitempty"`
	Env      []string `json:"env"`
	Dir      string   `json:"dir"`
	// Sandbox is set when the init runs in new user, PID, mount, UTS, IPC and network
	// namespaces and must build the sandbox (sandbox.go) before running anything.
	Sandbox bool `json:"sandbox"`
	// SingleID: the user namespace maps one id only (an unprivileged runtime).
	SingleID bool `json:"single_id,omitempty"`
	// The VM paths bound into the sandbox. A root runtime passes each as a detached mount
	// (open_tree clone) on a descriptor, since the init (an unprivileged uid on the VM) may
	// have no search permission on their parents: DirFD for the repl's directory, RootfsFD for
	// an image root (0: none), MountFDs[i] for Mounts[i]. An unprivileged runtime passes none
	// (all 0): the init, the same uid as the runtime, opens the paths itself.
	DirFD    int            `json:"dir_fd,omitempty"`
	Rootfs   string         `json:"rootfs,omitempty"`
	RootfsFD int            `json:"rootfs_fd,omitempty"`
	Mounts   []conman.Mount `json:"mounts,omitempty"`
	MountFDs []int          `json:"mount_fds,omitempty"`
	// TmpBytes sizes the container's /tmp.
	TmpBytes int64 `json:"tmp_bytes,omitempty"`
	// MaxOutput caps the output file (fd 1): past it the file starts over. Zero: no cap.
	MaxOutput int64 `json:"max_output,omitempty"`
}

type execRequest struct {
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	// DialPort asks the init for a TCP connection to 127.0.0.1:DialPort inside the container
	// (the unprivileged way to reach a sandboxed web port); Args is then empty.
	DialPort int `json:"dial_port,omitempty"`
}

type execResponse struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
	// Errno is the system error behind Error, when there is one (ECONNREFUSED for a dial).
	Errno int `json:"errno,omitempty"`
}

// execMessage is what flows after the response: Exit from the init, Signal from the runtime.
type execMessage struct {
	Exit   *int `json:"exit,omitempty"`
	Signal int  `json:"signal,omitempty"`
}

type exitRecord struct {
	Code int `json:"code"`
}

// socketPath returns a path to the container's socket short enough for sun_path (108 bytes):
// long state directories are reached through an O_PATH descriptor, /proc/self/fd/N/init.sock.
// The returned file, if not nil, must stay open while the path is used.
func socketPath(stateDir string) (string, *os.File, error) {
	p := filepath.Join(stateDir, socketName)
	if len(p) < 100 {
		return p, nil, nil
	}
	fd, err := unix.Open(stateDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open state directory: %w", err)
	}
	f := os.NewFile(uintptr(fd), stateDir)
	return fmt.Sprintf("/proc/self/fd/%d/%s", fd, socketName), f, nil
}
