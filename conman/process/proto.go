package process

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The protocol between the runtime and a container's init.
//
// Start: the runtime starts the init (this binary, see Init) with two extra descriptors: fd 3,
// from which the init reads an initConfig as JSON until EOF (the runtime writes it after moving
// the init into its cgroups, so nothing the container runs escapes them), and fd 4, on which the
// init writes "ok" once it is ready, or an error text, then closes it.
//
// Exec: the init listens on a SOCK_SEQPACKET unix socket in the container's state directory.
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
	StateDir string   `json:"state_dir"`
	// Namespaces is set when the init runs in new namespaces and must set them up.
	Namespaces bool `json:"namespaces"`
	Network    bool `json:"network"`
	// Output is the file the init appends its stdout and stderr (and the main process's) to.
	Output string `json:"output"`
	// MaxOutput caps Output: past it the file starts over. Zero: no cap.
	MaxOutput int64 `json:"max_output,omitempty"`
}

type execRequest struct {
	Args []string `json:"args"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
}

type execResponse struct {
	Pid   int    `json:"pid,omitempty"`
	Error string `json:"error,omitempty"`
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
