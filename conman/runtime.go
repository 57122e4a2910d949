package conman

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Runtime runs containers on one VM. It is shaped after containerd's task API, CRI's
// Exec/Attach and Nomad's task driver: a container is created from a Spec, started, observed
// (Inspect, Wait, List), entered (Exec, Attach), stopped with a grace period and removed.
//
// A Runtime persists what it needs to find its containers again: a new Runtime over the same
// state (for conman/process, the same StateDir) recovers the containers still running, so a
// restarted conman keeps its repls instead of losing them (Nomad's RecoverTask). List after a
// restart returns them.
//
// Every method is safe for concurrent use. IDs are DNS-label-like strings (see ValidID).
// Implementations must pass the conformance suite in conman/conmantest.
type Runtime interface {
	// Create prepares a container from spec without starting it. ErrExists if id is taken.
	Create(ctx context.Context, id string, spec Spec) error
	// Start starts a created container: its init, then spec.Command if set. It returns once the
	// container is running and ready for Exec. Starting a running container is ErrConflict.
	Start(ctx context.Context, id string) error
	// Stop asks the container to stop (SIGTERM to every process), waits up to grace, then kills
	// it (SIGKILL). It returns when the container has exited or ctx ends. Stopping a container
	// that is not running is not an error.
	Stop(ctx context.Context, id string, grace time.Duration) error
	// Remove deletes a container that is not running, with its runtime state (not Spec.Dir).
	// A running container is ErrConflict: Stop it first.
	Remove(ctx context.Context, id string) error
	// Exec runs a new process inside a running container, on a pty when opts.TTY is set. The
	// process is killed when the returned Process is closed.
	Exec(ctx context.Context, id string, opts ExecOptions) (Process, error)
	// Attach streams the output (stdout and stderr) of the container's main process, from its
	// start, following until the container exits (then io.EOF). The main process's stdin is
	// empty; interactive use goes through Exec with a TTY.
	Attach(ctx context.Context, id string) (io.ReadCloser, error)
	// Wait blocks until the container is not running and returns its status.
	Wait(ctx context.Context, id string) (Status, error)
	// Inspect returns the container's current status, including resource usage.
	Inspect(ctx context.Context, id string) (Status, error)
	// List returns the status of every container the runtime knows, recovered ones included.
	List(ctx context.Context) ([]Status, error)
	// Close releases the runtime's resources and waits for its goroutines. It does not stop
	// containers: they keep running and a new Runtime recovers them.
	Close() error
}

// Spec says what a container runs and with what limits.
type Spec struct {
	// Hostname is the container's hostname (UTS namespace). Empty means the container ID.
	Hostname string `json:"hostname,omitempty"`
	// Command is the container's main process (e.g. the repl's web app), run by the container's
	// init. The container stops when it exits, with its exit code. Empty means no main process:
	// the container idles until stopped and is used through Exec.
	Command []string `json:"command,omitempty"`
	// Env is added to the environment of every process in the container (main and Exec), after
	// the defaults PATH, HOME, HOSTNAME and PORT.
	Env []string `json:"env,omitempty"`
	// Dir is the working directory (the repl's persistent directory), created if missing and
	// never deleted by the runtime. Empty means a directory inside the container's state, which
	// Remove deletes with the container: set Dir for anything that must persist.
	Dir string `json:"dir,omitempty"`
	// Shell is what the conman Server runs on a pty for an attach. Empty means /bin/sh. The
	// Runtime itself does not use it.
	Shell []string `json:"shell,omitempty"`
	// Port is the container's web port, exported as PORT. Zero means none. The conman Server
	// assigns it; the runtime only records and exports it.
	Port int `json:"port,omitempty"`
	// Network gives the container its own network namespace (only loopback inside). Runtimes
	// that sandbox (conman/process with Sandbox, conman/oci) always do, whatever this says, and
	// implement Dialer so the Server reaches the web port inside. False shares the VM's network
	// on runtimes that do not sandbox, so the web port is reachable on the VM's address.
	Network bool `json:"network,omitempty"`
	// Rootfs is a directory holding the container's root file system (an unpacked image), used
	// read-only. Empty means the runtime's default: conman/process builds a root from the VM's
	// own /usr, /bin, /sbin, /lib* and a generated /etc; conman/oci uses its configured image.
	Rootfs string `json:"rootfs,omitempty"`
	// Image names a local OCI image layout (a directory with index.json), optionally followed
	// by "@" and a tag or digest: the runtime unpacks it once per VM and uses it as Rootfs.
	// Runtimes without image support reject it with ErrInvalid.
	Image string `json:"image,omitempty"`
	// Mounts are extra bind mounts from the VM into the container, set by the platform (never by
	// a repl). Targets must be absolute and must not be /, /proc, /sys or /dev.
	Mounts []Mount `json:"mounts,omitempty"`
	// Limits caps the container's resources. Zero fields mean unlimited.
	Limits Limits `json:"limits,omitempty"`
}

// Mount is a bind mount of a VM path into a container.
type Mount struct {
	// Source is the absolute path on the VM.
	Source string `json:"source"`
	// Target is the absolute path inside the container.
	Target string `json:"target"`
	// ReadOnly mounts it read-only (always nosuid and nodev).
	ReadOnly bool `json:"read_only,omitempty"`
}

// Limits are a container's resource limits (cgroups in conman/process).
type Limits struct {
	// MemoryBytes caps resident memory; exceeding it OOM-kills a process of the container.
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	// CPUMilli caps CPU time in thousandths of a core (1000 = one core).
	CPUMilli int64 `json:"cpu_milli,omitempty"`
	// Pids caps the number of processes and threads; beyond it fork fails.
	Pids int64 `json:"pids,omitempty"`
}

// State is a container's lifecycle state.
type State string

const (
	Created State = "created"
	Running State = "running"
	Exited  State = "exited"
)

// Status is what Inspect, Wait and List report about a container.
type Status struct {
	ID    string `json:"id"`
	State State  `json:"state"`
	// Pid is the host process ID of the container's init while it runs.
	Pid  int  `json:"pid,omitempty"`
	Spec Spec `json:"spec"`
	// ExitCode is the container's exit code once Exited: the main process's code, 128+signal
	// when it was killed (137 for SIGKILL and OOM kills), or -1 when unknown (a recovered
	// container that was killed while no runtime watched it).
	ExitCode int `json:"exit_code"`
	// OOMKilled reports that the memory limit killed a process of the container.
	OOMKilled bool      `json:"oom_killed,omitempty"`
	Created   time.Time `json:"created"`
	Started   time.Time `json:"started,omitzero"`
	Finished  time.Time `json:"finished,omitzero"`
	// Isolated is true when the container runs in its own namespaces; false means the
	// unprivileged fallback (plain processes), with the reason in Isolation.
	Isolated bool `json:"isolated"`
	// Isolation describes the isolation in effect, e.g. "namespaces pid,mnt,uts,ipc; cgroup v1
	// memory,cpu,pids" or "plain process (not root: operation not permitted)".
	Isolation string `json:"isolation"`
	// Recovered is true for a container started by an earlier runtime instance.
	Recovered bool  `json:"recovered,omitempty"`
	Usage     Usage `json:"usage"`
}

// Usage is a container's resource use.
type Usage struct {
	// CPU is the CPU time consumed so far.
	CPU time.Duration `json:"cpu_ns"`
	// MemoryBytes is the current memory use.
	MemoryBytes int64 `json:"memory_bytes"`
	// Pids is the current number of processes (threads with cgroups).
	Pids int64 `json:"pids"`
}

// ExecOptions describe a process to run in a container.
type ExecOptions struct {
	// Args is the command and its arguments; required.
	Args []string
	// Env is added after the container's environment.
	Env []string
	// Dir is the working directory; empty means the container's Spec.Dir.
	Dir string
	// TTY runs the process on a new pty of the container (its own devpts); Stdout then carries
	// the terminal's output and Stderr is nil.
	TTY bool
	// Size is the initial terminal size; zero means 80x24.
	Size WindowSize
}

// Dialer is implemented by runtimes whose containers have a network namespace of their own:
// the Server reaches a repl's web port with DialContainer (a connection made inside the
// container's namespace, to its loopback) instead of on Config.ReplHost, so the port is never
// exposed on the VM's network.
type Dialer interface {
	// DialContainer connects to TCP port on the container's loopback. ErrNotRunning if the
	// container does not run.
	DialContainer(ctx context.Context, id string, port int) (net.Conn, error)
}

// ProcessHandoff is a process on its way from one conman process to its successor on the same
// VM (an upgrade in place): the descriptors that keep it alive and whatever else the runtime
// needs, opaque to conman. conman sends both over a unix socket (SCM_RIGHTS).
type ProcessHandoff struct {
	Files []*os.File
	State []byte
}

// Handoffer is implemented by Processes that can be handed to another conman process without
// the process noticing (a shell keeps its pty, its jobs and its cwd). conman hands over TTY
// processes only. Runtimes whose processes do not implement it lose them in an upgrade in
// place: conman kills them and closes their attach connections with 1012, as a restart does.
type Handoffer interface {
	// Handoff stops the Process's own goroutines and makes a pending or later Read of Stdout
	// fail with os.ErrDeadlineExceeded, without losing a byte (what was not read stays in the
	// pty), and returns duplicates of its descriptors. The caller passes them on and closes
	// them; it then closes the Process, which releases this copy without killing the process.
	// An error (the process exited meanwhile) leaves the Process as it was.
	Handoff() (ProcessHandoff, error)
}

// Adopter is implemented by runtimes that can take over a process handed off by the same
// runtime in another conman process (Handoffer). Adopt validates everything it is given (the
// descriptors must be what the state says, for a container that runs here) and takes
// ownership of h.Files, closing them on error too.
type Adopter interface {
	AdoptProcess(ctx context.Context, id string, h ProcessHandoff) (Process, error)
}

// WindowSize is a terminal size in character cells.
type WindowSize struct {
	Cols uint16 `json:"cols"`
	Rows uint16 `json:"rows"`
}

// ResizePTY sets the window size of the pty whose master is f, for Process.Resize
// implementations: it checks the size (ErrInvalid for a zero dimension) and goes through f's
// SyscallConn, which holds the descriptor against a concurrent Close, so a resize that races
// the shell's end never reaches a closed or reused descriptor (File.Fd would).
func ResizePTY(f *os.File, size WindowSize) error {
	if size.Cols == 0 || size.Rows == 0 {
		return fmt.Errorf("%w: window size %dx%d", ErrInvalid, size.Cols, size.Rows)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: size.Rows, Col: size.Cols})
	}); err != nil {
		return err
	}
	return ierr
}

// Process is a process started by Exec.
type Process interface {
	// Stdin writes to the process's standard input (the terminal with a TTY). Closing it sends
	// EOF (without a TTY).
	Stdin() io.WriteCloser
	// Stdout reads the process's standard output (the terminal with a TTY).
	Stdout() io.Reader
	// Stderr reads its standard error; nil with a TTY.
	Stderr() io.Reader
	// Resize changes the terminal size; ErrNoTTY without a TTY.
	Resize(size WindowSize) error
	// Signal sends sig to the process.
	Signal(sig syscall.Signal) error
	// Wait waits for the process to exit and returns its exit code (128+signal if killed).
	Wait(ctx context.Context) (int, error)
	// Close kills the process if it still runs and releases its resources.
	Close() error
}

// Errors. Match them with errors.Is.
var (
	ErrNotFound   = errors.New("conman: container not found")
	ErrExists     = errors.New("conman: container already exists")
	ErrNotRunning = errors.New("conman: container not running")
	// ErrConflict: the container is in the wrong state for the operation.
	ErrConflict = errors.New("conman: conflict")
	ErrInvalid  = errors.New("conman: invalid")
	ErrNoTTY    = errors.New("conman: process has no tty")
	// ErrDraining: the server is draining and starts nothing new.
	ErrDraining = errors.New("conman: draining")
)

// ValidID reports whether id can name a container: 1 to 63 characters of [a-z0-9_-], starting
// with a letter or digit. It keeps IDs safe as file, cgroup and host names.
func ValidID(id string) bool {
	if len(id) == 0 || len(id) > 63 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}
