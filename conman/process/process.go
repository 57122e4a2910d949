package process

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/idslots"
)

// Isolation selects how containers are isolated.
type Isolation string

const (
	// Sandbox, the zero value, runs every container in the sandbox (see the package
	// documentation). Start fails, saying why, where the kernel or the runtime's privileges do
	// not allow it: there is no silent fallback.
	Sandbox Isolation = ""
	// None runs plain processes with the runtime's own privileges, on the VM's file system and
	// network, without namespaces or cgroups: only for trusted code (tests, development). It
	// must be asked for explicitly, and Status.Isolation says "unsandboxed".
	None Isolation = "none"
)

// Config configures a Runtime.
type Config struct {
	// StateDir holds one directory per container (state.json, output.log, init.sock, exit.json,
	// and home/ when Spec.Dir is empty). Required. A new Runtime over the same StateDir recovers
	// the containers recorded there.
	StateDir string
	// Isolation: zero value Sandbox.
	Isolation Isolation
	// UIDBase is the VM uid (and gid) where the containers' id ranges start, for a runtime
	// running as root: the container in slot n maps its ids 0-65535 to UIDBase+n*65536 on.
	// Zero means 1<<28; it must be a multiple of 65536. Runtimes sharing a host must agree on
	// it and on SlotDir.
	UIDBase uint32
	// UIDSlots is the number of id ranges on the host. Zero means 4096.
	UIDSlots int
	// SlotDir holds the host-wide reservations of id ranges. Empty means
	// /run/switchyard/uid-slots.
	SlotDir string
	// CgroupRoot is where cgroups are mounted. Empty means /sys/fs/cgroup.
	CgroupRoot string
	// CgroupParent is the cgroup (relative to each hierarchy) under which containers get theirs.
	// It must not be shared by two Runtimes on a host (Remove kills what is in a container's
	// cgroup). Empty means "switchyard/<8 hex digits of a hash of StateDir>".
	CgroupParent string
	// InitPath is the binary started as each container's init; it must call Init first thing in
	// main. Empty means the running binary itself (/proc/self/exe), which then must call Init.
	InitPath string
	// StartTimeout bounds how long Start waits for the init to be ready. Zero means 10s.
	StartTimeout time.Duration
	// MaxOutputBytes caps each container's output file (what Attach follows): past it the file
	// starts over, so a chatty repl cannot fill the disk. Zero means 16 MiB; negative, no cap.
	MaxOutputBytes int64
	// Logger receives the runtime's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Runtime is a conman.Runtime running containers as Linux process trees in their own
// namespaces and cgroups, or as plain processes where that is not permitted.
type Runtime struct {
	cfg  Config
	log  *slog.Logger
	cg   *cgroups // nil: no cgroups
	cgEr error

	root  bool               // euid 0: per-container id ranges, setns dials
	slots *idslots.Allocator // nil unless root and sandboxed

	// startProcess is os.StartProcess; tests swap it to see what the kernel refusing does.
	startProcess func(name string, argv []string, attr *os.ProcAttr) (*os.Process, error)

	mu         sync.Mutex
	containers map[string]*container
	closed     bool

	wg sync.WaitGroup
}

var _ conman.Runtime = (*Runtime)(nil)

type container struct {
	id  string
	dir string

	mu       sync.Mutex
	st       conman.Status
	pidStart uint64 // start time of Pid in clock ticks since boot, against pid reuse
	cg       *cgroup
	pidfd    *os.File      // watched while running
	done     chan struct{} // closed when the container exits (nil before start)
	stopping bool
	slot     int // id range slot, -1 for none
}

// persisted is state.json.
type persisted struct {
	Status   conman.Status `json:"status"`
	PidStart uint64        `json:"pid_start,omitempty"`
	Slot     *int          `json:"slot,omitempty"`
}

// New returns a Runtime and recovers the containers recorded in cfg.StateDir: those still
// running (same pid, same start time) are watched again, the others are marked exited.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: process: StateDir is required", conman.ErrInvalid)
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("process: state directory: %w", err)
	}
	cfg.StateDir = abs
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	if cfg.CgroupParent == "" {
		sum := sha256.Sum256([]byte(cfg.StateDir))
		cfg.CgroupParent = "switchyard/" + hex.EncodeToString(sum[:4])
	}
	if strings.Contains(cfg.CgroupParent, "..") || filepath.IsAbs(cfg.CgroupParent) {
		return nil, fmt.Errorf("%w: process: CgroupParent %q must be a relative path", conman.ErrInvalid, cfg.CgroupParent)
	}
	if cfg.InitPath == "" {
		cfg.InitPath = "/proc/self/exe"
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if cfg.MaxOutputBytes == 0 {
		cfg.MaxOutputBytes = 16 << 20
	}
	switch cfg.Isolation {
	case Sandbox, None:
	default:
		return nil, fmt.Errorf("%w: process: unknown isolation %q", conman.ErrInvalid, cfg.Isolation)
	}
	if cfg.UIDBase == 0 {
		cfg.UIDBase = 1 << 28
	}
	if cfg.UIDSlots == 0 {
		cfg.UIDSlots = 4096
	}
	if cfg.SlotDir == "" {
		cfg.SlotDir = "/run/switchyard/uid-slots"
	}
	if cfg.UIDBase%idRange != 0 || cfg.UIDSlots < 0 || uint64(cfg.UIDBase)+uint64(cfg.UIDSlots)*idRange > 1<<32-1 {
		return nil, fmt.Errorf("%w: process: UIDBase %d and UIDSlots %d do not fit in 32-bit ids in 65536-aligned ranges", conman.ErrInvalid, cfg.UIDBase, cfg.UIDSlots)
	}
	if cfg.Isolation == Sandbox {
		if _, err := seccompProgram(); err != nil {
			return nil, fmt.Errorf("process: sandbox: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.StateDir, 0o711); err != nil {
		return nil, fmt.Errorf("process: state directory: %w", err)
	}
	r := &Runtime{cfg: cfg, log: cfg.Logger, containers: make(map[string]*container), root: os.Geteuid() == 0, startProcess: os.StartProcess}
	if r.log == nil {
		r.log = slog.Default()
	}
	if cfg.Isolation != None {
		if !r.root {
			r.cgEr = errors.New("not root")
		} else {
			r.cg, r.cgEr = detectCgroups(cfg.CgroupRoot, cfg.CgroupParent)
			r.slots = &idslots.Allocator{Dir: cfg.SlotDir, Owner: cfg.StateDir, Base: cfg.UIDBase, Slots: cfg.UIDSlots}
		}
		if r.cgEr != nil {
			r.log.Warn("conman/process: no cgroups, containers run without resource limits", "err", r.cgEr)
		}
	} else {
		r.log.Warn("conman/process: Isolation None: containers run unsandboxed, with the runtime's privileges; run only trusted code")
	}
	if err := r.recover(); err != nil {
		return nil, err
	}
	if r.slots != nil {
		r.slots.Reclaim(func(id string) bool {
			c, ok := r.containers[id]
			return ok && c.slot >= 0
		})
	}
	return r, nil
}

// sandboxFlags are the namespaces of a sandboxed container's init. The cgroup namespace comes
// later, from the init's launcher thread, once the init is inside its cgroups.
const sandboxFlags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNS |
	syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNET

func (r *Runtime) recover() error {
	entries, err := os.ReadDir(r.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("process: recover: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() || !conman.ValidID(e.Name()) {
			continue
		}
		dir := filepath.Join(r.cfg.StateDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, stateName))
		if err != nil {
			continue // not created completely; Remove cleans it
		}
		var p persisted
		if err := json.Unmarshal(b, &p); err != nil || p.Status.ID != e.Name() {
			r.log.Warn("conman/process: unreadable container state, skipped", "dir", dir, "err", err)
			continue
		}
		c := &container{id: p.Status.ID, dir: dir, st: p.Status, pidStart: p.PidStart, slot: -1}
		if p.Slot != nil {
			c.slot = *p.Slot
		}
		if r.cg != nil {
			c.cg = r.cg.open(c.id)
		}
		if c.st.State == conman.Running {
			c.st.Recovered = true
			watch := false
			if start, err := pidStartTime(c.st.Pid); err == nil && start == c.pidStart {
				fd, err := unix.PidfdOpen(c.st.Pid, unix.PIDFD_NONBLOCK)
				if err == nil {
					c.pidfd = os.NewFile(uintptr(fd), "pidfd")
					c.done = make(chan struct{})
					watch = true
					r.log.Info("conman/process: recovered running container", "id", c.id, "pid", c.st.Pid)
				}
			}
			r.containers[c.id] = c
			if watch {
				// Started last: the watcher may finish the container at once, and nothing here
				// may touch it after that.
				r.wg.Add(1)
				go r.watch(c)
			} else {
				// Gone while nobody watched: its init may have left its exit code.
				r.finish(c, readExitCode(dir))
			}
			continue
		}
		r.containers[c.id] = c
	}
	return nil
}

func readExitCode(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, exitName))
	if err != nil {
		return -1
	}
	var e exitRecord
	if json.Unmarshal(b, &e) != nil {
		return -1
	}
	return e.Code
}

// pidStartTime returns field 22 of /proc/<pid>/stat: the process's start time since boot.
func pidStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, errors.New("malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// ErrClosed is returned by every method of a closed Runtime.
var ErrClosed = errors.New("process: runtime closed")

func (r *Runtime) get(id string) (*container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	c, ok := r.containers[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", conman.ErrNotFound, id)
	}
	return c, nil
}

func (c *container) save() error {
	rec := persisted{Status: c.st, PidStart: c.pidStart}
	if c.slot >= 0 {
		rec.Slot = &c.slot
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.dir, stateName+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(c.dir, stateName))
}

// StateDir returns the absolute state directory, for a successor Runtime to recover from.
func (r *Runtime) StateDir() string { return r.cfg.StateDir }

// Create implements conman.Runtime.
func (r *Runtime) Create(ctx context.Context, id string, spec conman.Spec) error {
	if !conman.ValidID(id) {
		return fmt.Errorf("%w: container id %q", conman.ErrInvalid, id)
	}
	if spec.Port < 0 || spec.Port > 65535 || spec.Limits.MemoryBytes < 0 || spec.Limits.CPUMilli < 0 || spec.Limits.Pids < 0 {
		return fmt.Errorf("%w: spec out of range", conman.ErrInvalid)
	}
	if spec.Image != "" {
		return fmt.Errorf("%w: conman/process does not unpack images (Spec.Image); give an unpacked root as Spec.Rootfs", conman.ErrInvalid)
	}
	if spec.Dir != "" && !filepath.IsAbs(spec.Dir) {
		return fmt.Errorf("%w: Spec.Dir %q must be absolute", conman.ErrInvalid, spec.Dir)
	}
	if spec.Rootfs != "" && !filepath.IsAbs(spec.Rootfs) {
		return fmt.Errorf("%w: Spec.Rootfs %q must be absolute", conman.ErrInvalid, spec.Rootfs)
	}
	for _, m := range spec.Mounts {
		if err := validMountTarget(m); err != nil {
			return err
		}
	}
	if r.cfg.Isolation == None && (spec.Rootfs != "" || len(spec.Mounts) > 0) {
		return fmt.Errorf("%w: Spec.Rootfs and Spec.Mounts need the sandbox (Isolation None has no mount namespace)", conman.ErrInvalid)
	}
	if spec.Hostname == "" {
		spec.Hostname = id
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if _, ok := r.containers[id]; ok {
		return fmt.Errorf("%w: %q", conman.ErrExists, id)
	}
	dir := filepath.Join(r.cfg.StateDir, id)
	_ = os.RemoveAll(dir) // leftovers of an incomplete create
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("process: create %s: %w", id, err)
	}
	if spec.Dir == "" {
		spec.Dir = filepath.Join(dir, homeName)
	}
	c := &container{id: id, dir: dir, slot: -1, st: conman.Status{
		ID: id, State: conman.Created, Spec: spec, Created: time.Now().UTC(),
	}}
	if err := c.save(); err != nil {
		_ = os.RemoveAll(dir)
		return fmt.Errorf("process: create %s: %w", id, err)
	}
	r.containers[id] = c
	return nil
}

func (r *Runtime) env(spec conman.Spec) []string {
	env := []string{defaultPath, "HOME=" + spec.Dir, "HOSTNAME=" + spec.Hostname}
	if spec.Port != 0 {
		env = append(env, "PORT="+strconv.Itoa(spec.Port))
	}
	for _, kv := range spec.Env {
		if r.cfg.Isolation == Sandbox && strings.HasPrefix(kv, "HOST=") {
			continue
		}
		env = append(env, kv)
	}
	if r.cfg.Isolation == Sandbox {
		// The web app listens on the container's own loopback, where DialContainer reaches it,
		// whatever address the caller had in mind.
		env = append(env, "HOST=127.0.0.1")
	}
	return env
}

// Start implements conman.Runtime.
func (r *Runtime) Start(ctx context.Context, id string) error {
	c, err := r.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.State != conman.Created {
		return fmt.Errorf("%w: container %q is %s", conman.ErrConflict, id, c.st.State)
	}
	spec := c.st.Spec
	sandbox := r.cfg.Isolation == Sandbox
	fail := func(err error) error { return fmt.Errorf("process: start %s: %w", id, err) }

	// The repl's directory, owned by the container's root.
	if err := os.MkdirAll(spec.Dir, 0o755); err != nil {
		return fail(fmt.Errorf("repl directory: %w", err))
	}
	var ids idMapping
	switch {
	case sandbox && r.slots != nil:
		slot, err := r.slots.Acquire(id, c.slot)
		if err != nil {
			return fail(err)
		}
		if slot != c.slot {
			c.slot = slot
			if err := c.save(); err != nil {
				return fail(err)
			}
		}
		base := r.slots.Base + uint32(slot)*idRange
		ids = idMapping{uid: base, gid: base, size: idRange}
		if fi, err := os.Stat(spec.Dir); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && (st.Uid != base || st.Gid != base) {
				if err := shiftOwner(spec.Dir, base); err != nil {
					return fail(fmt.Errorf("give the repl directory to its id range: %w", err))
				}
			}
		}
	case sandbox:
		ids = idMapping{uid: uint32(os.Geteuid()), gid: uint32(os.Getegid()), size: 1}
	}

	logf, err := os.OpenFile(filepath.Join(c.dir, outputName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	exitf, err := os.OpenFile(filepath.Join(c.dir, exitName), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fail(err)
	}
	defer exitf.Close()
	ctl, err := listenControl(c.dir)
	if err != nil {
		return fail(err)
	}
	defer ctl.Close()
	files := []*os.File{logf, ctl, exitf}
	// A root runtime hands the sandbox its VM paths as detached mounts, from fd 7 on (see
	// initConfig).
	var icfgFDs initConfig
	if sandbox && r.root {
		tree := func(path string) (int, error) {
			fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
			if err != nil {
				return 0, fmt.Errorf("open_tree %s: %w", path, err)
			}
			files = append(files, os.NewFile(uintptr(fd), path))
			return 4 + len(files) - 1, nil // fds 0-2, cfg 3, ready 4, then files[1:] from 5
		}
		var err error
		if icfgFDs.DirFD, err = tree(spec.Dir); err != nil {
			return fail(fmt.Errorf("repl directory: %w", err))
		}
		if spec.Rootfs != "" {
			if icfgFDs.RootfsFD, err = tree(spec.Rootfs); err != nil {
				return fail(fmt.Errorf("rootfs: %w", err))
			}
		}
		for _, m := range spec.Mounts {
			fd, err := tree(m.Source)
			if err != nil {
				return fail(fmt.Errorf("mount: %w", err))
			}
			icfgFDs.MountFDs = append(icfgFDs.MountFDs, fd)
		}
	}
	defer func() {
		for _, f := range files[3:] {
			f.Close()
		}
	}()

	var cg *cgroup
	if r.cg != nil {
		cg, err = r.cg.create(id, spec.Limits)
		if err != nil {
			return fail(err)
		}
	}
	fail = func(err error) error {
		if cg != nil {
			cg.kill()
			cg.remove()
		}
		_ = os.Remove(filepath.Join(c.dir, socketName))
		return fmt.Errorf("process: start %s: %w", id, err)
	}

	p, err := r.spawn(files, sandbox, ids)
	if err != nil {
		if sandbox {
			return fail(fmt.Errorf("sandbox: %w (user namespaces not permitted here? Isolation None runs trusted code without the sandbox)", err))
		}
		return fail(err)
	}
	pid := p.Pid
	fd, perr := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	kill := func() {
		_ = p.Kill()
		_, _ = p.Wait()
	}
	if perr != nil {
		p.cfgW.Close()
		p.readyR.Close()
		kill()
		return fail(fmt.Errorf("pidfd_open: %w", perr))
	}
	pidfd := os.NewFile(uintptr(fd), "pidfd")
	cfgW, readyR := p.cfgW, p.readyR
	defer readyR.Close()
	if cg != nil {
		if err := cg.add(pid); err != nil {
			cfgW.Close()
			kill()
			pidfd.Close()
			return fail(err)
		}
	}
	icfg := initConfig{
		ID: id, Hostname: spec.Hostname, Command: spec.Command, Env: r.env(spec), Dir: spec.Dir,
		Sandbox: sandbox, SingleID: ids.size == 1, DirFD: icfgFDs.DirFD, Rootfs: spec.Rootfs,
		RootfsFD: icfgFDs.RootfsFD, Mounts: spec.Mounts, MountFDs: icfgFDs.MountFDs,
		TmpBytes: spec.Limits.MemoryBytes, MaxOutput: max(r.cfg.MaxOutputBytes, 0),
	}
	werr := json.NewEncoder(cfgW).Encode(icfg)
	cfgW.Close()
	// Wait for the init's verdict, bounded by ctx and StartTimeout.
	deadline := time.Now().Add(r.cfg.StartTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = readyR.SetReadDeadline(deadline)
	stopCtx := context.AfterFunc(ctx, func() { _ = readyR.SetReadDeadline(time.Now()) })
	msg, rerr := io.ReadAll(readyR)
	stopCtx()
	if werr != nil || rerr != nil || string(msg) != readyMessage {
		kill()
		pidfd.Close()
		switch {
		case ctx.Err() != nil:
			return fail(ctx.Err())
		case rerr != nil:
			return fail(fmt.Errorf("init not ready: %w", rerr))
		case len(msg) == 0:
			return fail(fmt.Errorf("init exited without a word (does %s call process.Init first in main?)", r.cfg.InitPath))
		}
		return fail(fmt.Errorf("init: %s", msg))
	}
	start, _ := pidStartTime(pid)
	_ = p.Release()
	c.cg = cg
	c.pidfd = pidfd
	c.pidStart = start
	c.done = make(chan struct{})
	c.stopping = false
	c.st.State = conman.Running
	c.st.Pid = pid
	c.st.Started = time.Now().UTC()
	c.st.Finished = time.Time{}
	c.st.ExitCode = 0
	c.st.OOMKilled = false
	c.st.Recovered = false
	c.st.Isolated = sandbox
	c.st.Isolation = r.describe(sandbox, ids)
	if err := c.save(); err != nil {
		r.log.Error("conman/process: persist container state", "id", id, "err", err)
	}
	r.wg.Add(1)
	go r.watch(c)
	return nil
}

// idMapping is a container's range of VM ids (size 0: no user namespace).
type idMapping struct {
	uid, gid, size uint32
}

func (r *Runtime) describe(sandbox bool, ids idMapping) string {
	var parts []string
	if sandbox {
		parts = append(parts, fmt.Sprintf("sandbox: namespaces user,pid,mnt,uts,ipc,net,cgroup; ids 0-%d are %d-%d on the VM; "+
			"pivot_root into a read-only root; seccomp; no_new_privs; capabilities %s",
			ids.size-1, ids.uid, ids.uid+ids.size-1, strings.Join(KeptCapabilities(), ",")))
	} else {
		parts = append(parts, "unsandboxed: plain process with the runtime's privileges (Isolation None: trusted code only)")
	}
	if r.cg != nil {
		parts = append(parts, r.cg.describe())
	} else if r.cgEr != nil {
		parts = append(parts, "no cgroups ("+r.cgEr.Error()+"): no resource limits")
	} else {
		parts = append(parts, "no cgroups: no resource limits")
	}
	return strings.Join(parts, "; ")
}

// listenControl creates the container's control socket, init.sock in its state directory, and
// returns the listening socket for the init to inherit.
func listenControl(dir string) (*os.File, error) {
	path, pin, err := socketPath(dir)
	if err != nil {
		return nil, err
	}
	if pin != nil {
		defer pin.Close()
	}
	_ = os.Remove(filepath.Join(dir, socketName))
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	f, err := ln.File()
	ln.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return f, nil
}

type initProcess struct {
	*os.Process
	cfgW   *os.File
	readyR *os.File
}

// spawn starts an init with extra (output, control socket, exit file, then the sandbox's
// paths) as fds 1/2, 5, 6 and 7 on, in the sandbox's namespaces with ids mapped when sandbox is
// set.
func (r *Runtime) spawn(extra []*os.File, sandbox bool, ids idMapping) (*initProcess, error) {
	sys := &syscall.SysProcAttr{Setsid: true}
	if sandbox {
		sys.Cloneflags = sandboxFlags
		sys.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.uid), Size: int(ids.size)}}
		sys.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(ids.gid), Size: int(ids.size)}}
		// A root runtime may let the container manage its groups; an unprivileged one may not.
		sys.GidMappingsEnableSetgroups = r.root
		// The child becomes the namespace's root (the first id of the range) before its exec, so
		// the init gets the namespace's capabilities.
		sys.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: !r.root}
	}
	cfgR, cfgW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		cfgR.Close()
		cfgW.Close()
		return nil, err
	}
	null, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer null.Close()
	fds := append([]*os.File{null, extra[0], extra[0], cfgR, readyW}, extra[1:]...)
	p, err := r.startProcess(r.cfg.InitPath, []string{initArgv0}, &os.ProcAttr{
		Env:   []string{initEnv + "=1", "GOMAXPROCS=1", "GOTRACEBACK=crash"},
		Files: fds,
		Sys:   sys,
	})
	cfgR.Close()
	readyW.Close()
	if err != nil {
		cfgW.Close()
		readyR.Close()
		return nil, err
	}
	return &initProcess{Process: p, cfgW: cfgW, readyR: readyR}, nil
}

// watch waits for a running container's init to exit.
func (r *Runtime) watch(c *container) {
	defer r.wg.Done()
	c.mu.Lock()
	pidfd, pid := c.pidfd, c.st.Pid
	c.mu.Unlock()
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return
	}
	err = rc.Read(func(fd uintptr) bool {
		n, _ := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return n > 0
	})
	if err != nil {
		return // the runtime is closing; the container keeps running
	}
	code := -1
	var ws syscall.WaitStatus
	for {
		wpid, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if err == nil && wpid == pid {
			code = exitCode(ws)
		} else {
			code = readExitCode(c.dir) // not our child: recovered after a restart
		}
		break
	}
	r.finish(c, code)
}

// finish marks a container exited and releases its cgroup.
func (r *Runtime) finish(c *container, code int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.State != conman.Running {
		return
	}
	if c.cg != nil {
		c.st.OOMKilled = c.cg.oomKills() > 0
		c.cg.kill()
		c.cg.remove()
		c.cg = nil
	}
	if code == -1 && c.stopping {
		code = 128 + int(syscall.SIGKILL)
	}
	if c.pidfd != nil {
		c.pidfd.Close()
		c.pidfd = nil
	}
	c.st.State = conman.Exited
	c.st.ExitCode = code
	c.st.Finished = time.Now().UTC()
	c.st.Pid = 0
	c.pidStart = 0
	_ = os.Remove(filepath.Join(c.dir, socketName))
	if err := c.save(); err != nil {
		r.log.Error("conman/process: persist container state", "id", c.id, "err", err)
	}
	if c.done != nil {
		close(c.done)
	}
}

// signal sends sig to the container's init if it is still the process we started.
func (c *container) signal(sig syscall.Signal) error {
	if c.st.State != conman.Running {
		return conman.ErrNotRunning
	}
	if start, err := pidStartTime(c.st.Pid); err != nil || start != c.pidStart {
		return conman.ErrNotRunning
	}
	return syscall.Kill(c.st.Pid, sig)
}

// Stop implements conman.Runtime.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	c, err := r.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.st.State != conman.Running {
		c.mu.Unlock()
		return nil
	}
	c.stopping = true
	done := c.done
	_ = c.signal(syscall.SIGTERM)
	c.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	case <-t.C:
	}
	c.mu.Lock()
	_ = c.signal(syscall.SIGKILL)
	if c.cg != nil {
		c.cg.kill()
	}
	c.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Remove implements conman.Runtime.
func (r *Runtime) Remove(ctx context.Context, id string) error {
	c, err := r.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.State == conman.Running {
		return fmt.Errorf("%w: container %q is running", conman.ErrConflict, id)
	}
	r.mu.Lock()
	delete(r.containers, id)
	r.mu.Unlock()
	if r.slots != nil && c.slot >= 0 {
		r.slots.Release(c.slot, id)
	}
	if r.cg != nil {
		g := r.cg.open(id)
		g.kill()
		g.remove()
	}
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("process: remove %s: %w", id, err)
	}
	return nil
}

// Wait implements conman.Runtime.
func (r *Runtime) Wait(ctx context.Context, id string) (conman.Status, error) {
	c, err := r.get(id)
	if err != nil {
		return conman.Status{}, err
	}
	c.mu.Lock()
	done, state := c.done, c.st.State
	c.mu.Unlock()
	if state == conman.Running {
		select {
		case <-done:
		case <-ctx.Done():
			return conman.Status{}, ctx.Err()
		}
	}
	return r.Inspect(ctx, id)
}

// Inspect implements conman.Runtime.
func (r *Runtime) Inspect(ctx context.Context, id string) (conman.Status, error) {
	c, err := r.get(id)
	if err != nil {
		return conman.Status{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	st.Spec.Command = append([]string(nil), st.Spec.Command...)
	st.Spec.Env = append([]string(nil), st.Spec.Env...)
	st.Spec.Shell = append([]string(nil), st.Spec.Shell...)
	if st.State == conman.Running {
		if c.cg != nil {
			st.Usage = c.cg.usage()
		} else {
			st.Usage = procUsage(st.Pid)
		}
	}
	return st, nil
}

// procUsage is the usage of a plain-process container's init and its waited-for children.
func procUsage(pid int) conman.Usage {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return conman.Usage{}
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 22 {
		return conman.Usage{}
	}
	var ticks int64
	for _, k := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		n, _ := strconv.ParseInt(f[k], 10, 64)
		ticks += n
	}
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	return conman.Usage{
		CPU:         time.Duration(ticks) * (time.Second / 100),
		MemoryBytes: rss * int64(os.Getpagesize()),
		Pids:        1,
	}
}

// List implements conman.Runtime.
func (r *Runtime) List(ctx context.Context) ([]conman.Status, error) {
	r.mu.Lock()
	ids := make([]string, 0, len(r.containers))
	for id := range r.containers {
		ids = append(ids, id)
	}
	r.mu.Unlock()
	out := make([]conman.Status, 0, len(ids))
	for _, id := range ids {
		st, err := r.Inspect(ctx, id)
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, st)
	}
	return out, nil
}

// Close implements conman.Runtime: it stops watching containers and leaves them running.
func (r *Runtime) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	cs := make([]*container, 0, len(r.containers))
	for _, c := range r.containers {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	for _, c := range cs {
		c.mu.Lock()
		if c.pidfd != nil {
			_ = c.pidfd.SetReadDeadline(time.Now())
		}
		c.mu.Unlock()
	}
	r.wg.Wait()
	for _, c := range cs {
		c.mu.Lock()
		if c.pidfd != nil {
			c.pidfd.Close()
			c.pidfd = nil
		}
		c.mu.Unlock()
	}
	return nil
}
