package process

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/internal/netns"
)

// Init runs the container init when the current process was started as one by this package's
// Runtime, and otherwise returns at once. A binary that uses Runtime with the default
// Config.InitPath (the binary itself, /proc/self/exe) must call Init first thing in main, before
// flags are parsed or goroutines started:
//
//	func main() {
//		process.Init()
//		...
//	}
//
// When it is the init, Init never returns: it becomes the container's PID 1 (sets up the mount,
// UTS and network namespaces, starts Spec.Command, runs Exec requests, reaps zombies, forwards
// signals) and exits with the container's exit code. Test binaries call it from TestMain.
func Init() {
	if os.Getenv(initEnv) == "" {
		return
	}
	runAsInit()
}

// init runs the container init even in a binary that forgot to call Init: without it, such a
// binary started as an init would run its own main (a server, a test suite) inside the
// container, which could start containers of its own. Importing this package is enough; the
// explicit Init call documents the contract and runs before the main package's own init work.
func init() {
	if os.Getenv(initEnv) != "" {
		runAsInit()
	}
}

func runAsInit() {
	os.Unsetenv(initEnv)
	code := runInit()
	os.Exit(code)
}

// initThreads is how many OS threads the init creates up front. The Go runtime keeps idle
// threads, so once a pids limit is exhausted by the repl the init still has the threads it needs
// (a Go program that fails to create a thread dies). The limit is raised by initPidsHeadroom.
const (
	initThreads      = 6
	initPidsHeadroom = 12
)

// prewarmThreads makes the runtime start n threads now: each goroutine locks one and parks.
func prewarmThreads(n int) {
	var wg sync.WaitGroup
	parked := make(chan struct{}, n)
	release := make(chan struct{})
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			parked <- struct{}{}
			<-release
			runtime.UnlockOSThread() // the thread goes idle instead of exiting
		}()
	}
	for range n {
		<-parked
	}
	close(release)
	wg.Wait()
}

// initState is the init's process table.
type initState struct {
	cfg initConfig

	mu      sync.Mutex
	waiters map[int]chan int // pid → exit code, for the processes the init started
	groups  map[int]bool     // process groups of started processes (value: has a tty)
	mainPid int
	ending  bool

	// copied is closed when the main process's output is all written (nil: no copier).
	copied chan struct{}

	// pending counts Exec connections that still have an exit code to hand out.
	pending sync.WaitGroup

	// launch runs a function on the confined launcher thread (sandbox only; nil otherwise).
	launch func(func())
	// exitFile is exit.json, opened by the runtime.
	exitFile *os.File
}

func runInit() int {
	// None of these descriptors may leak into what the container runs.
	for fd := 3; fd <= 6; fd++ {
		syscall.CloseOnExec(fd)
	}
	cfgFile := os.NewFile(3, "config")
	ready := os.NewFile(4, "ready")
	lnFile := os.NewFile(5, "control")
	exitFile := os.NewFile(6, "exit")
	fail := func(err error) int {
		fmt.Fprintf(ready, "%v", err)
		ready.Close()
		return 1
	}
	var cfg initConfig
	if err := json.NewDecoder(cfgFile).Decode(&cfg); err != nil {
		return fail(fmt.Errorf("read config: %w", err))
	}
	cfgFile.Close()
	pathFDs := append([]int{cfg.DirFD, cfg.RootfsFD}, cfg.MountFDs...)
	for _, fd := range pathFDs {
		if fd > 6 {
			syscall.CloseOnExec(fd)
		}
	}
	// Only now, inside the cgroups: thread creation would wait behind the cgroup migration.
	prewarmThreads(initThreads)
	s := &initState{cfg: cfg, waiters: make(map[int]chan int), groups: make(map[int]bool), exitFile: exitFile}

	// Signals first, so that nothing is lost between setup and the loop.
	sigs := make(chan os.Signal, 64)
	signal.Notify(sigs, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP,
		syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)

	if err := s.setup(); err != nil {
		return fail(err)
	}
	for _, fd := range pathFDs {
		if fd > 6 {
			syscall.Close(fd)
		}
	}
	fl, err := net.FileListener(lnFile)
	lnFile.Close()
	if err != nil {
		return fail(fmt.Errorf("control socket: %w", err))
	}
	ln, ok := fl.(*net.UnixListener)
	if !ok {
		return fail(errors.New("control socket is not a unix socket"))
	}
	if cfg.Sandbox {
		// The last layers, on the thread every process of the container is started from.
		if s.launch, err = startLauncher(); err != nil {
			return fail(err)
		}
	}
	var mainDone chan int
	if len(cfg.Command) > 0 {
		var files []*os.File
		if cfg.MaxOutput > 0 {
			null, err := os.Open(os.DevNull)
			if err != nil {
				return fail(err)
			}
			out, err := unix.Dup(1)
			if err != nil {
				return fail(err)
			}
			syscall.CloseOnExec(out)
			pr, pw, err := os.Pipe()
			if err != nil {
				return fail(err)
			}
			s.copied = make(chan struct{})
			go func() {
				defer close(s.copied)
				copyCapped(pr, os.NewFile(uintptr(out), "output"), cfg.MaxOutput)
			}()
			files = []*os.File{null, pw, pw}
		}
		pid, done, err := s.start(cfg.Command, nil, "", false, files)
		for _, f := range files {
			f.Close() // the main process has them now
		}
		if err != nil {
			return fail(fmt.Errorf("start %q: %w", cfg.Command[0], err))
		}
		s.mainPid, mainDone = pid, done
	}
	_, _ = io.WriteString(ready, readyMessage)
	ready.Close()

	go s.serve(ln)

	mainCode := -1
	for {
		select {
		case code := <-mainDone:
			mainCode = code
			return s.exit(mainCode)
		case sig := <-sigs:
			switch sig {
			case syscall.SIGCHLD:
				if s.reap() && s.isEnding() {
					if mainCode < 0 {
						mainCode = 128 + int(syscall.SIGTERM)
					}
					return s.exit(mainCode)
				}
			case syscall.SIGTERM:
				s.terminate()
				if s.reap() {
					return s.exit(128 + int(syscall.SIGTERM))
				}
			default:
				if s.mainPid != 0 {
					_ = syscall.Kill(s.mainPid, sig.(syscall.Signal))
				}
			}
		}
	}
}

// setup prepares the namespaces and the working directory.
func (s *initState) setup() error {
	cfg := s.cfg
	if cfg.Sandbox {
		// Nothing in the container may ptrace the init or read its /proc entries.
		if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("non-dumpable: %w", err)
		}
		if err := buildRoot(cfg); err != nil {
			return err
		}
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
		if err := netns.LoopbackUp(); err != nil {
			return fmt.Errorf("bring up lo: %w", err)
		}
	} else {
		// Plain process: adopt orphans so they are reaped and stopped with the container.
		_ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
		if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
			return fmt.Errorf("working directory: %w", err)
		}
	}
	if err := os.Chdir(cfg.Dir); err != nil {
		return fmt.Errorf("working directory: %w", err)
	}
	return nil
}

// startLauncher starts the goroutine, locked to its OS thread for good, from which the init
// starts every process of the container. The thread enters a cgroup namespace of its own (the
// init is in the container's cgroups by now, so they become the namespace's root), drops its
// capabilities to keptCaps, sets no_new_privs and installs the seccomp filter: all of them are
// per thread and inherited by what the thread forks, and the init's other threads keep serving
// the runtime unfiltered. The thread never returns to the Go scheduler's pool.
func startLauncher() (func(func()), error) {
	prog, err := seccompProgram()
	if err != nil {
		return nil, err
	}
	reqs := make(chan func())
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the init
		if err := unix.Unshare(unix.CLONE_NEWCGROUP); err != nil {
			errc <- fmt.Errorf("cgroup namespace: %w", err)
			return
		}
		if err := dropCapabilities(); err != nil {
			errc <- err
			return
		}
		if err := applySeccomp(prog); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for fn := range reqs {
			fn()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return func(fn func()) {
		done := make(chan struct{})
		reqs <- func() { fn(); close(done) }
		<-done
	}, nil
}

// start starts a process with files as its stdio (nil: /dev/null); tty makes it a session
// leader with files[0] as its controlling terminal. The pid is registered before the reaper can
// see it exit.
func (s *initState) start(args, env []string, dir string, tty bool, files []*os.File) (int, chan int, error) {
	if dir == "" {
		dir = s.cfg.Dir
	}
	path := args[0]
	if filepath.Base(path) == path {
		lp, err := lookPath(path, append(append([]string{}, s.cfg.Env...), env...))
		if err != nil {
			return 0, nil, err
		}
		path = lp
	}
	if files == nil {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return 0, nil, err
		}
		defer null.Close()
		files = []*os.File{null, os.Stdout, os.Stderr}
	}
	sys := &syscall.SysProcAttr{Setpgid: true}
	if tty {
		sys = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	}
	if !s.cfg.Sandbox {
		sys.Pdeathsig = syscall.SIGKILL
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ending {
		return 0, nil, errors.New("container is stopping")
	}
	attr := &os.ProcAttr{Dir: dir, Env: append(append([]string{}, s.cfg.Env...), env...), Files: files, Sys: sys}
	var (
		p   *os.Process
		err error
	)
	if s.launch != nil {
		s.launch(func() { p, err = os.StartProcess(path, args, attr) })
	} else {
		p, err = os.StartProcess(path, args, attr)
	}
	if err != nil {
		return 0, nil, err
	}
	pid := p.Pid
	_ = p.Release()
	ch := make(chan int, 1)
	s.waiters[pid] = ch
	s.groups[pid] = tty
	return pid, ch, nil
}

func lookPath(file string, env []string) (string, error) {
	pathVar := ""
	for _, kv := range env {
		if len(kv) > 5 && kv[:5] == "PATH=" {
			pathVar = kv[5:]
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: executable file not found in $PATH", file)
}

// copyCapped appends what r delivers to f (opened for append); when the file would grow past max it
// starts over (truncates), so a chatty repl cannot fill the VM's disk. Followers (Attach) notice
// the truncation and start from the top.
func copyCapped(r, f *os.File, max int64) {
	defer r.Close()
	defer f.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if fi, serr := f.Stat(); serr == nil && fi.Size()+int64(n) > max {
				_ = f.Truncate(0)
				_, _ = io.WriteString(f, "[conman: output exceeded the limit; earlier output dropped]\n")
			}
			_, _ = f.Write(buf[:n])
		}
		if err != nil {
			return
		}
	}
}

// reap collects every exited child and reports whether none is left.
func (s *initState) reap() bool {
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil { // ECHILD: nothing left
			return true
		}
		if pid <= 0 {
			return false
		}
		s.mu.Lock()
		if ch, ok := s.waiters[pid]; ok {
			ch <- exitCode(ws)
			delete(s.waiters, pid)
			delete(s.groups, pid)
		}
		s.mu.Unlock()
	}
}

func exitCode(ws syscall.WaitStatus) int {
	switch {
	case ws.Exited():
		return ws.ExitStatus()
	case ws.Signaled():
		return 128 + int(ws.Signal())
	}
	return -1
}

func (s *initState) isEnding() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ending
}

// terminate asks every process of the container to stop: SIGTERM to all, SIGHUP to terminals.
func (s *initState) terminate() {
	s.mu.Lock()
	s.ending = true
	groups := make(map[int]bool, len(s.groups))
	for g, tty := range s.groups {
		groups[g] = tty
	}
	s.mu.Unlock()
	for g, tty := range groups {
		if tty {
			_ = syscall.Kill(-g, syscall.SIGHUP)
		}
		_ = syscall.Kill(-g, syscall.SIGTERM)
	}
	if s.cfg.Sandbox {
		// Everything in our PID namespace but ourselves.
		_ = syscall.Kill(-1, syscall.SIGTERM)
	}
}

// exit records the container's exit code for a runtime that is not our parent, kills what is
// left and returns the code.
func (s *initState) exit(code int) int {
	// Let the Exec connections report their processes' exits first (bounded).
	// So does the main process's output (unless its children keep the pipe open).
	flushed := make(chan struct{})
	go func() {
		s.pending.Wait()
		if s.copied != nil {
			<-s.copied
		}
		close(flushed)
	}()
	select {
	case <-flushed:
	case <-time.After(200 * time.Millisecond):
	}
	b, _ := json.Marshal(exitRecord{Code: code})
	if s.exitFile != nil {
		_ = s.exitFile.Truncate(0)
		_, _ = s.exitFile.WriteAt(b, 0)
		_ = s.exitFile.Sync()
	}
	if s.cfg.Sandbox {
		return code // the kernel kills the rest of the PID namespace with us
	}
	s.mu.Lock()
	for g := range s.groups {
		_ = syscall.Kill(-g, syscall.SIGKILL)
	}
	s.mu.Unlock()
	return code
}

func (s *initState) serve(ln *net.UnixListener) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		s.pending.Add(1)
		go func() {
			defer s.pending.Done()
			s.handle(c)
		}()
	}
}

// handle runs one Exec connection.
func (s *initState) handle(c *net.UnixConn) {
	defer c.Close()
	if err := s.checkPeer(c); err != nil {
		return // not the runtime: no answer at all
	}
	buf := make([]byte, maxPacket)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	var req execRequest
	reply := func(resp execResponse, fds []int) error {
		b, _ := json.Marshal(resp)
		var oob []byte
		if len(fds) > 0 {
			oob = syscall.UnixRights(fds...)
		}
		_, _, err := c.WriteMsgUnix(b, oob, nil)
		return err
	}
	if err := json.Unmarshal(buf[:n], &req); err != nil || (len(req.Args) == 0) == (req.DialPort == 0) {
		_ = reply(execResponse{Error: "invalid exec request"}, nil)
		return
	}
	if req.DialPort != 0 {
		s.dial(req.DialPort, reply)
		return
	}
	var (
		child  []*os.File // the process's ends
		parent []*os.File // the runtime's ends
	)
	closeAll := func(fs []*os.File) {
		for _, f := range fs {
			f.Close()
		}
	}
	if req.TTY {
		master, slave, err := pty.Open()
		if err != nil {
			_ = reply(execResponse{Error: "open pty: " + err.Error()}, nil)
			return
		}
		cols, rows := req.Cols, req.Rows
		if cols == 0 || rows == 0 {
			cols, rows = 80, 24
		}
		_ = pty.Setsize(master, &pty.Winsize{Cols: cols, Rows: rows})
		child = []*os.File{slave, slave, slave}
		parent = []*os.File{master}
	} else {
		for i := 0; i < 3; i++ {
			r, w, err := os.Pipe()
			if err != nil {
				closeAll(child)
				closeAll(parent)
				_ = reply(execResponse{Error: "pipe: " + err.Error()}, nil)
				return
			}
			if i == 0 {
				child, parent = append(child, r), append(parent, w)
			} else {
				child, parent = append(child, w), append(parent, r)
			}
		}
	}
	env := req.Env
	if req.TTY {
		env = append([]string{"TERM=xterm-256color"}, env...)
	}
	pid, done, err := s.start(req.Args, env, req.Dir, req.TTY, child)
	closeAll(child[:1])
	if !req.TTY {
		closeAll(child[1:])
	}
	if err != nil {
		closeAll(parent)
		_ = reply(execResponse{Error: err.Error()}, nil)
		return
	}
	fds := make([]int, len(parent))
	for i, f := range parent {
		fds[i] = int(f.Fd())
	}
	err = reply(execResponse{Pid: pid}, fds)
	closeAll(parent)
	if err != nil {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		return
	}
	// Signals from the runtime; its hang-up kills the process group.
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		b := make([]byte, 512)
		for {
			n, err := c.Read(b)
			if err != nil || n == 0 {
				return
			}
			var m execMessage
			if json.Unmarshal(b[:n], &m) == nil && m.Signal > 0 {
				_ = syscall.Kill(pid, syscall.Signal(m.Signal))
			}
		}
	}()
	select {
	case code := <-done:
		b, _ := json.Marshal(execMessage{Exit: &code})
		_, _ = c.Write(b)
		c.Close()
		<-gone
	case <-gone:
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
}

// checkPeer accepts only the runtime. In the sandbox the runtime is outside the container's PID
// namespace, so SO_PEERCRED gives its pid as 0, while every process of the container has a pid
// here: a repl that reached the socket would be refused. Without the sandbox, the peer must run
// as the init's own uid.
func (s *initState) checkPeer(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if s.cfg.Sandbox {
		if cred.Pid != 0 {
			return fmt.Errorf("peer pid %d is inside the container", cred.Pid)
		}
		return nil
	}
	if cred.Uid != uint32(os.Getuid()) {
		return fmt.Errorf("peer uid %d", cred.Uid)
	}
	return nil
}

// dial connects to the container's own loopback and hands the connection to the runtime.
func (s *initState) dial(port int, reply func(execResponse, []int) error) {
	if port < 1 || port > 65535 {
		_ = reply(execResponse{Error: "invalid port"}, nil)
		return
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		resp := execResponse{Error: err.Error()}
		var errno syscall.Errno
		if errors.As(err, &errno) {
			resp.Errno = int(errno)
		}
		_ = reply(resp, nil)
		return
	}
	defer conn.Close()
	f, err := conn.(*net.TCPConn).File()
	if err != nil {
		_ = reply(execResponse{Error: err.Error()}, nil)
		return
	}
	defer f.Close()
	_ = reply(execResponse{}, []int{int(f.Fd())})
}
