//go:build linux

package oci

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/creack/pty"

	"github.com/switchyard-dev/switchyard/conman"
)

var execSeq atomic.Uint64

// Exec implements conman.Runtime: `<runtime> exec --process` with the container's user,
// capabilities and environment, waiting for the process and exiting with its code.
func (r *Runtime) Exec(ctx context.Context, id string, opts conman.ExecOptions) (conman.Process, error) {
	if len(opts.Args) == 0 {
		return nil, fmt.Errorf("%w: Exec needs Args", conman.ErrInvalid)
	}
	c, err := r.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.p.Status.State != conman.Running {
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", conman.ErrNotRunning, id)
	}
	spec := c.p.Status.Spec
	env := append(containerEnv(id, &spec), opts.Env...)
	dir := opts.Dir
	if dir == "" {
		dir = workDir(&spec)
	}
	err = r.lookPath(c, opts.Args[0], env, dir)
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("oci: exec: %w", err)
	}
	caps := slices.Clone(defaultCaps)
	if r.gvisor {
		// gVisor does not make a process non-dumpable when it execs a file it may not read (the
		// init's execute-only shell; a FIXME in its task_exec.go), so the init is kept from the
		// repl's processes by a capability they lack: a process may not follow the /proc
		// entries of one holding capabilities it does not. gVisor implements no audit.
		caps = slices.DeleteFunc(caps, func(c string) bool { return c == "CAP_AUDIT_WRITE" })
	}
	proc := specs.Process{
		Terminal:        opts.TTY,
		Args:            opts.Args,
		Env:             env,
		Cwd:             dir,
		NoNewPrivileges: true,
		Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
	}
	size := opts.Size
	if size.Cols == 0 || size.Rows == 0 {
		size = conman.WindowSize{Cols: 80, Rows: 24}
	}
	if opts.TTY {
		proc.ConsoleSize = &specs.Box{Height: uint(size.Rows), Width: uint(size.Cols)}
	}
	b, err := json.Marshal(proc)
	if err != nil {
		return nil, err
	}
	n := strconv.FormatUint(execSeq.Add(1), 10)
	p := &process{r: r, id: id, done: make(chan struct{})}
	p.procFile = filepath.Join(c.dir, "exec-"+n+".json")
	p.pidFile = filepath.Join(c.dir, "exec-"+n+".pid")
	if err := os.WriteFile(p.procFile, b, 0o600); err != nil {
		return nil, fmt.Errorf("oci: exec: %w", err)
	}
	args := []string{"exec", "--process", p.procFile}
	if r.gvisor {
		args = append(args, "--internal-pid-file", p.pidFile)
	} else {
		args = append(args, "--pid-file", p.pidFile)
	}
	cmd := exec.Command(r.binary, r.runtimeArgs()...)
	if opts.TTY {
		// The runtime's own terminal is a pty of ours: runc relays it to the container's pty
		// (and follows its size on SIGWINCH); runsc hands it to the sandbox as the process's
		// terminal. (runc 1.1 takes a console socket only when it detaches, which would leave
		// no process to report the exit code.)
		master, slave, err := pty.Open()
		if err != nil {
			p.cleanFiles()
			return nil, fmt.Errorf("oci: exec pty: %w", err)
		}
		_ = pty.Setsize(master, &pty.Winsize{Rows: size.Rows, Cols: size.Cols})
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
		p.tty = master
		p.stdin = nopCloser{master}
		p.stdout = master
		if !r.gvisor {
			args = append(args, "--tty")
		}
	} else {
		if p.stdin, cmd.Stdin, err = pipeW(); err == nil {
			if cmd.Stdout, p.stdout, err = pipeR(); err == nil {
				cmd.Stderr, p.stderr, err = pipeR()
			}
		}
		if err != nil {
			p.closeAll()
			p.cleanFiles()
			return nil, fmt.Errorf("oci: exec pipes: %w", err)
		}
	}
	cmd.Args = append(cmd.Args, append(args, id)...)
	err = cmd.Start()
	// The child holds its ends now.
	for _, f := range []any{cmd.Stdin, cmd.Stdout, cmd.Stderr} {
		if f, ok := f.(*os.File); ok {
			f.Close()
		}
	}
	if err != nil {
		p.closeAll()
		p.cleanFiles()
		return nil, fmt.Errorf("oci: exec: %w", err)
	}
	p.cmd = cmd
	go p.wait()
	return p, nil
}

func pipeR() (w, r *os.File, err error) { r, w, err = os.Pipe(); return w, r, err }
func pipeW() (w, r *os.File, err error) { r, w, err = os.Pipe(); return w, r, err }

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// process is a process started by Exec: the runtime's exec command, which waits for it and
// exits with its code.
type process struct {
	r        *Runtime
	id       string
	cmd      *exec.Cmd
	procFile string
	pidFile  string

	stdin          io.WriteCloser
	stdout, stderr io.Reader
	tty            *os.File

	done     chan struct{} // closed when cmd has exited
	code     int
	waitErr  error
	once     sync.Once
	closeErr error
}

func (p *process) wait() {
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		p.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			p.code = 128 + int(ws.Signal())
		}
	default:
		p.waitErr = err
	}
	close(p.done)
}

func (p *process) Stdin() io.WriteCloser { return p.stdin }
func (p *process) Stdout() io.Reader     { return p.stdout }
func (p *process) Stderr() io.Reader {
	if p.tty != nil {
		return nil
	}
	return p.stderr
}

func (p *process) Resize(size conman.WindowSize) error {
	if p.tty == nil {
		return conman.ErrNoTTY
	}
	return conman.ResizePTY(p.tty, size)
}

// Signal sends sig to the process inside the container (not to the runtime's exec command):
// runc wrote its host pid, runsc its pid inside the sandbox.
func (p *process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	pid, err := p.pid()
	if err != nil {
		return err
	}
	if p.r.gvisor {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := p.r.run(ctx, "kill", "--pid", strconv.Itoa(pid), p.id, strconv.Itoa(int(sig)))
		return err
	}
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return fmt.Errorf("oci: signal: %w", err)
	}
	defer unix.Close(fd)
	// The pid is the exec'd process only while the exec command still waits for it.
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// pid waits for the runtime to write the process's pid (it does once the process started).
func (p *process) pid() (int, error) {
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(10 * time.Second)
	for {
		if b, err := os.ReadFile(p.pidFile); err == nil && len(b) > 0 {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 0 {
				return 0, fmt.Errorf("oci: bad pid file %q", b)
			}
			return pid, nil
		}
		select {
		case <-p.done:
			return 0, os.ErrProcessDone
		case <-deadline:
			return 0, errors.New("oci: the runtime wrote no pid for the process")
		case <-t.C:
		}
	}
}

func (p *process) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.done:
		return p.code, p.waitErr
	case <-ctx.Done():
		return -1, ctx.Err()
	}
}

// Close kills the process if it still runs, waits for the runtime's exec command and
// releases the descriptors.
func (p *process) Close() error {
	p.once.Do(func() {
		select {
		case <-p.done:
		default:
			if err := p.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
				_ = p.cmd.Process.Kill()
			}
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		p.closeAll()
		p.cleanFiles()
	})
	return p.closeErr
}

func (p *process) closeAll() {
	for _, c := range []any{p.stdin, p.stdout, p.stderr, p.tty} {
		if c, ok := c.(io.Closer); ok && c != nil {
			_ = c.Close()
		}
	}
}

func (p *process) cleanFiles() {
	os.Remove(p.procFile)
	os.Remove(p.pidFile)
}
