//go:build linux

package oci

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"

	"github.com/switchyard-dev/switchyard/internal/idslots"
)

// Config configures a Runtime.
type Config struct {
	// Binary is the OCI runtime: a path, or a name looked up in PATH ("runc", "crun", "runsc").
	// Empty means "runc". A binary whose --version names runsc is driven as gVisor (see the
	// package documentation).
	Binary string
	// Args are global flags put before every subcommand, e.g. {"--platform=ptrace"} for runsc.
	// The Runtime adds --root (its own state) and, for runsc, --network=host unless Args set a
	// --network.
	Args []string
	// StateDir holds the runtime binary's state (runtime/), one directory per container
	// (containers/<id>/: bundle, state.json, output.log, exit code) and unpacked images
	// (images/). Required. A new Runtime over the same StateDir recovers the containers
	// recorded there.
	StateDir string
	// Rootfs is the root file system of containers whose Spec names neither Rootfs nor Image.
	// Empty means Image.
	Rootfs string
	// Image is the image (a local OCI image layout, as Spec.Image) of containers whose Spec names
	// neither Rootfs nor Image. With both Rootfs and Image empty, such a Spec is ErrInvalid.
	Image string
	// UIDBase is the host uid (and gid) where the containers' ranges start (runc; runsc's
	// sandbox has its own): the container in slot n maps its ids 0-65535 to UIDBase+n*65536 on.
	// Zero means 1<<28; it must be a multiple of 65536. Runtimes sharing a host (this package's
	// and conman/process's) must agree on it and on SlotDir.
	UIDBase uint32
	// UIDSlots is the number of id ranges on the host. Zero means 4096.
	UIDSlots int
	// SlotDir holds the host-wide reservations of id ranges (shared with conman/process).
	// Empty means /run/switchyard/uid-slots.
	SlotDir string
	// RunDir holds each running container's root file system mount and network namespace. It
	// is made traversable by every user (the containers' users open their root through it).
	// Empty means
	// /run/switchyard-oci/<8 hex digits of a hash of StateDir>.
	RunDir string
	// CgroupRoot is where cgroups are mounted. Empty means /sys/fs/cgroup.
	CgroupRoot string
	// CgroupParent is the cgroup (relative to each hierarchy) under which each container gets
	// <CgroupParent>/<id>, holding its limits, with the runtime binary's cgroup inside it. It
	// must not be shared by two Runtimes. Empty means "switchyard-oci/<8 hex digits of a hash of
	// StateDir>".
	CgroupParent string
	// TmpBytes caps the container's /tmp (a tmpfs; its pages also count against the memory
	// limit). Zero means 256 MiB.
	TmpBytes int64
	// StartTimeout bounds how long Start waits for the container to run. Zero means 30s.
	StartTimeout time.Duration
	// MaxOutputBytes caps each container's output file (what Attach follows): past it the file
	// starts over. Zero means 16 MiB; negative means no cap.
	MaxOutputBytes int64
	// Logger receives the runtime's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Runtime is a conman.Runtime that runs each container through an OCI runtime binary (runc,
// crun, runsc) from a bundle it writes. See the package documentation.
type Runtime struct {
	cfg     Config
	binary  string // absolute path
	version string // first line of --version
	gvisor  bool
	log     *slog.Logger
	cg      *cgroupSet
	runDir  string
	slots   *idslots.Allocator

	imageMu sync.Mutex

	mu         sync.Mutex
	containers map[string]*container
	closed     bool

	stop chan struct{}
	wg   sync.WaitGroup
}

var (
	_ conman.Runtime = (*Runtime)(nil)
	_ conman.Dialer  = (*Runtime)(nil)
)

type container struct {
	id  string
	dir string

	mu       sync.Mutex
	p        persisted
	pidfd    *os.File      // the shim's, while watched
	shim     *exec.Cmd     // set when this Runtime started the shim (it must reap it)
	done     chan struct{} // closed when the container has exited (nil before Start)
	stopping bool
}

// persisted is state.json.
type persisted struct {
	Status    conman.Status `json:"status"`
	Slot      int           `json:"slot"`       // user-namespace range
	Rootfs    string        `json:"rootfs"`     // the image root (overlay lower dir)
	ShimPid   int           `json:"shim_pid"`   // the host process that waits for the runtime
	ShimStart uint64        `json:"shim_start"` // its start time, against pid reuse
	Killed    bool          `json:"killed,omitempty"`
}

// minGVisor is the oldest gVisor the Runtime drives (google/gvisor#12692: the OCI seccomp
// profile also covers exec'd processes).
const minGVisor = "20260301"

// gvisorDate returns the date (YYYYMMDD) in a runsc --version line ("runsc version
// release-20260901.0", "runsc version 0.0~20221219.0"), or "" if it names none.
func gvisorDate(version string) string {
	if m := regexp.MustCompile(`(?:^|[^0-9])(20[0-9]{6})(?:[^0-9]|$)`).FindStringSubmatch(version); m != nil {
		return m[1]
	}
	return ""
}

// New returns a Runtime over cfg.Binary and recovers the containers recorded in cfg.StateDir:
// those whose shim still runs are watched again, the others are marked exited.
func New(cfg Config) (*Runtime, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("%w: oci: StateDir is required", conman.ErrInvalid)
	}
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("oci: state directory: %w", err)
	}
	cfg.StateDir = abs
	if cfg.Binary == "" {
		cfg.Binary = "runc"
	}
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, fmt.Errorf("%w: oci: runtime binary: %w", conman.ErrInvalid, err)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, fmt.Errorf("oci: runtime binary: %w", err)
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
	if cfg.UIDBase%idRange != 0 || cfg.UIDSlots < 0 || uint64(cfg.UIDBase)+uint64(cfg.UIDSlots)*idRange > 1<<32 {
		return nil, fmt.Errorf("%w: oci: UIDBase %d and UIDSlots %d: the base must be a multiple of 65536 and the ranges fit 32 bits", conman.ErrInvalid, cfg.UIDBase, cfg.UIDSlots)
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	sum := sha256.Sum256([]byte(cfg.StateDir))
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "switchyard-oci/" + hex.EncodeToString(sum[:4])
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/switchyard-oci/" + hex.EncodeToString(sum[:4])
	}
	if cfg.RunDir, err = filepath.Abs(cfg.RunDir); err != nil {
		return nil, fmt.Errorf("oci: run directory: %w", err)
	}
	if strings.Contains(cfg.CgroupParent, "..") || filepath.IsAbs(cfg.CgroupParent) {
		return nil, fmt.Errorf("%w: oci: CgroupParent %q must be a relative path", conman.ErrInvalid, cfg.CgroupParent)
	}
	if cfg.TmpBytes == 0 {
		cfg.TmpBytes = 256 << 20
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.MaxOutputBytes == 0 {
		cfg.MaxOutputBytes = 16 << 20
	}
	if cfg.Rootfs != "" {
		if cfg.Rootfs, err = filepath.Abs(cfg.Rootfs); err != nil {
			return nil, fmt.Errorf("oci: rootfs: %w", err)
		}
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: oci: the OCI runtime needs root", conman.ErrInvalid)
	}
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return nil, fmt.Errorf("oci: %s --version: %w", bin, err)
	}
	version, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	r := &Runtime{
		cfg: cfg, binary: bin, version: version, log: cfg.Logger,
		gvisor:     strings.HasPrefix(version, "runsc"),
		containers: make(map[string]*container),
		stop:       make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	if d := gvisorDate(version); r.gvisor && d != "" && d < minGVisor {
		return nil, fmt.Errorf("%w: oci: %s is a gVisor from %s: it does not apply the seccomp profile to exec'd processes nor take a user namespace; use one from %s on", conman.ErrInvalid, bin, d, minGVisor)
	}
	if r.gvisor && !slices.ContainsFunc(cfg.Args, func(a string) bool { return strings.HasPrefix(strings.TrimLeft(a, "-"), "network") }) {
		r.cfg.Args = append(slices.Clip(cfg.Args), "--network=host")
	}
	if r.gvisor && !slices.ContainsFunc(cfg.Args, func(a string) bool { return strings.HasPrefix(strings.TrimLeft(a, "-"), "oci-seccomp") }) {
		r.cfg.Args = append(slices.Clip(r.cfg.Args), "--oci-seccomp")
	}
	if r.cg, err = detectCgroups(cfg.CgroupRoot, cfg.CgroupParent); err != nil {
		return nil, fmt.Errorf("oci: cgroups: %w", err)
	}
	for _, d := range []string{"runtime", "containers", "images"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, d), 0o711); err != nil {
			return nil, fmt.Errorf("oci: state directory: %w", err)
		}
	}
	r.runDir = cfg.RunDir
	r.slots = &idslots.Allocator{Dir: cfg.SlotDir, Owner: cfg.StateDir, Base: cfg.UIDBase, Slots: cfg.UIDSlots}
	if err := mkdirTraversable(r.runDir); err != nil {
		return nil, fmt.Errorf("oci: run directory: %w", err)
	}
	if err := r.recover(); err != nil {
		return nil, err
	}
	r.slots.Reclaim(func(id string) bool { _, ok := r.containers[id]; return ok })
	if cfg.MaxOutputBytes > 0 {
		r.wg.Add(1)
		go r.capOutputs()
	}
	return r, nil
}

// runtimeArgs returns the global flags, then args.
func (r *Runtime) runtimeArgs(args ...string) []string {
	a := make([]string, 0, len(r.cfg.Args)+2+len(args))
	a = append(a, "--root", filepath.Join(r.cfg.StateDir, "runtime"))
	a = append(a, r.cfg.Args...)
	return append(a, args...)
}

// run runs the runtime binary to completion and returns its stdout; the error carries stderr.
func (r *Runtime) run(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, r.binary, r.runtimeArgs(args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("oci: %s %s: %w: %s", filepath.Base(r.binary), args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func (r *Runtime) get(id string) (*container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, errors.New("oci: runtime closed")
	}
	c, ok := r.containers[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", conman.ErrNotFound, id)
	}
	return c, nil
}

// Create implements conman.Runtime.
func (r *Runtime) Create(ctx context.Context, id string, spec conman.Spec) error {
	if !conman.ValidID(id) {
		return fmt.Errorf("%w: container id %q", conman.ErrInvalid, id)
	}
	if err := validateSpec(&spec); err != nil {
		return err
	}
	rootfs, err := r.rootfs(ctx, spec)
	if err != nil {
		return err
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return errors.New("oci: runtime closed")
	}
	if _, ok := r.containers[id]; ok {
		r.mu.Unlock()
		return fmt.Errorf("%w: %s", conman.ErrExists, id)
	}
	c := &container{id: id, dir: filepath.Join(r.cfg.StateDir, "containers", id)}
	c.p = persisted{Slot: -1, Rootfs: rootfs, Status: conman.Status{ID: id, State: conman.Created, Spec: spec, Created: time.Now(), Isolated: true}}
	r.containers[id] = c // reserves the id
	r.mu.Unlock()

	if c.p.Slot, err = r.slots.Acquire(id, -1); err != nil {
		r.mu.Lock()
		delete(r.containers, id)
		r.mu.Unlock()
		return err
	}
	c.p.Status.Isolation = r.isolation(c.p.Slot)
	if err := c.create(); err != nil {
		r.slots.Release(c.p.Slot, id)
		r.mu.Lock()
		delete(r.containers, id)
		r.mu.Unlock()
		os.RemoveAll(c.dir)
		return err
	}
	return nil
}

func (c *container) create() error {
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("oci: container directory: %w", err)
	}
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("oci: container directory: %w", err)
	}
	return c.save()
}

func (c *container) save() error {
	b, err := json.Marshal(c.p)
	if err != nil {
		return err
	}
	tmp := filepath.Join(c.dir, "state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("oci: save state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(c.dir, "state.json")); err != nil {
		return fmt.Errorf("oci: save state: %w", err)
	}
	return nil
}

// idRange is the number of uids (and gids) of each container's user namespace.
const idRange = idslots.Range

func (r *Runtime) uidBase(slot int) uint32 { return r.cfg.UIDBase + uint32(slot)*idRange }

func (r *Runtime) isolation(slot int) string {
	if r.gvisor {
		return fmt.Sprintf("%s (%s): gVisor sandbox in user namespace %d+%d; namespaces pid,mnt,uts,ipc,net; caps and seccomp docker-default; cgroup %s", r.version, strings.Join(r.cfg.Args, " "), r.uidBase(slot), idRange, r.cg.version())
	}
	return fmt.Sprintf("%s: user namespace %d+%d; namespaces pid,mnt,uts,ipc,net,cgroup; caps and seccomp docker-default; no_new_privs; read-only root; cgroup %s", r.version, r.uidBase(slot), idRange, r.cg.version())
}

// Start implements conman.Runtime.
func (r *Runtime) Start(ctx context.Context, id string) error {
	c, err := r.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p.Status.State != conman.Created {
		return fmt.Errorf("%w: %s is %s", conman.ErrConflict, id, c.p.Status.State)
	}
	if err := r.start(ctx, c); err != nil {
		r.teardown(c)
		return err
	}
	return nil
}

// start prepares the bundle and starts the shim; c.mu is held.
func (r *Runtime) start(ctx context.Context, c *container) error {
	spec := &c.p.Status.Spec
	if len(spec.Command) > 0 {
		if err := r.lookPath(c, spec.Command[0], containerEnv(c.id, spec), spec.Dir); err != nil {
			return fmt.Errorf("oci: main program: %w", err)
		}
	}
	if err := r.cg.create(c.id, spec.Limits); err != nil {
		return err
	}
	if err := r.prepareFS(c); err != nil {
		return err
	}
	if r.gvisor {
		if err := newNetns(filepath.Join(r.runDir, c.id, "netns")); err != nil {
			return err
		}
	}
	bundle := filepath.Join(c.dir, "bundle")
	if err := r.writeBundle(c, bundle); err != nil {
		return err
	}
	out, err := os.OpenFile(filepath.Join(c.dir, "output.log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("oci: output file: %w", err)
	}
	defer out.Close()
	pidFile := filepath.Join(c.dir, "init.pid")
	exitFile := filepath.Join(c.dir, "exit")
	for _, f := range []string{pidFile, exitFile} {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	run := []string{"--log", filepath.Join(c.dir, "runtime.log"), "run", "--bundle", bundle, "--pid-file", pidFile}
	if !r.gvisor {
		run = append(run, "--keep") // its cgroup outlives the exit: v1 counts an OOM kill there
	}
	args := append([]string{"-c", shimScript, "conman-oci-shim", exitFile, r.binary}, r.runtimeArgs(append(run, c.id)...)...)
	shim := exec.Command("/bin/sh", args...)
	shim.Stdout, shim.Stderr = out, out
	shim.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // outlives conman; no terminal signals
	if err := shim.Start(); err != nil {
		return fmt.Errorf("oci: start shim: %w", err)
	}
	pidfd, err := pidfdOpen(shim.Process.Pid)
	if err != nil {
		_ = shim.Process.Kill()
		_ = shim.Wait()
		return err
	}
	// Ready once the runtime wrote the init's pid (runc: after the init ran) and reports the
	// container running; failed if the shim exits first.
	deadline := time.NewTimer(r.cfg.StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var pid int
	gone := false
	for pid == 0 {
		select {
		case <-deadline.C:
			err = fmt.Errorf("oci: container did not start within %v", r.cfg.StartTimeout)
		case <-ctx.Done():
			err = ctx.Err()
		case <-tick.C:
			b, _ := os.ReadFile(pidFile)
			if exitedNow(pidfd) {
				if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n > 0 {
					// It ran and is gone already (e.g. OOM-killed at once): a start and an exit.
					pid, gone = n, true
					continue
				}
				_ = shim.Wait()
				pidfd.Close()
				return fmt.Errorf("oci: %s run failed: %s", filepath.Base(r.binary), r.failure(c))
			}
			if len(b) == 0 {
				continue
			}
			if !r.gvisor {
				// runc writes the pid file once the init runs (after `start`); it is ready when
				// it handles SIGTERM (a PID 1 ignores signals it has no handler for).
				if n, _ := strconv.Atoi(strings.TrimSpace(string(b))); n > 0 && catchesTERM(n) {
					pid = n
				}
				continue
			}
			st, serr := r.state(ctx, c.id)
			if serr == nil && st.Status == "running" && st.Pid > 0 {
				pid = st.Pid
			}
			continue
		}
		// Timed out or cancelled: kill what started.
		_, _ = r.run(context.Background(), "kill", c.id, "KILL")
		_ = shim.Process.Kill()
		_ = shim.Wait()
		pidfd.Close()
		return err
	}
	c.shim = shim
	c.pidfd = pidfd
	c.done = make(chan struct{})
	c.p.ShimPid = shim.Process.Pid
	c.p.ShimStart, _ = procStartTime(shim.Process.Pid)
	c.p.Status.State = conman.Running
	c.p.Status.Pid = pid
	c.p.Status.Started = time.Now()
	c.p.Status.Finished = time.Time{}
	c.p.Killed = false
	if err := c.save(); err != nil {
		r.log.Warn("conman/oci: save state", "id", c.id, "err", err)
	}
	if gone {
		r.exited(c)
		return nil
	}
	r.wg.Add(1)
	go r.watch(c, pidfd)
	return nil
}

// shimScript waits for the runtime's foreground run (which returns the container's exit code,
// 128+signal if its init was killed) and records the code, so a conman that was not running
// when the container exited still learns it. It runs on the host in its own session.
const shimScript = `exitf=$1; shift
"$@" </dev/null
code=$?
echo "$code" >"$exitf.tmp" && mv "$exitf.tmp" "$exitf"`

// initScript is the container's PID 1: it starts the main process (or an idle one), reaps
// orphans while it waits, passes SIGTERM to every process of the container and exits with the
// main process's code. A wait the trap interrupts returns 128+15, so it waits until the main
// process is gone, then once more for a status the shell collected meanwhile (127: none).
const initScript = `trap 'kill -TERM -1 2>/dev/null' TERM
[ $# -gt 0 ] || set -- sleep 2147483647
"$@" </dev/null &
main=$!
code=0
while kill -0 "$main" 2>/dev/null; do wait "$main"; code=$?; done
wait "$main" 2>/dev/null; last=$?
[ "$last" = 127 ] || code=$last
exit "$code"`

// failure describes why a runtime run failed, from its log and the shim's output.
func (r *Runtime) failure(c *container) string {
	var msgs []string
	if b, err := os.ReadFile(filepath.Join(c.dir, "runtime.log")); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			var e struct {
				Level, Msg string
			}
			if json.Unmarshal([]byte(line), &e) == nil && (e.Level == "error" || e.Level == "fatal") {
				msgs = append(msgs, e.Msg)
			}
		}
	}
	if len(msgs) == 0 {
		if b, err := os.ReadFile(filepath.Join(c.dir, "output.log")); err == nil {
			if len(b) > 512 {
				b = b[len(b)-512:]
			}
			msgs = append(msgs, string(bytes.TrimSpace(b)))
		}
	}
	return strings.Join(msgs, "; ")
}

// runtimeState is what `<runtime> state` prints.
type runtimeState struct {
	Status string `json:"status"`
	Pid    int    `json:"pid"`
}

func (r *Runtime) state(ctx context.Context, id string) (runtimeState, error) {
	var st runtimeState
	out, err := r.run(ctx, "state", id)
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("oci: state of %s: %w", id, err)
	}
	return st, nil
}

// watch waits for the container's shim to exit and records the exit. Close ends it by closing
// the pidfd.
func (r *Runtime) watch(c *container, pidfd *os.File) {
	defer r.wg.Done()
	waitPidfd(pidfd)
	select {
	case <-r.stop:
		return
	default:
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r.exited(c)
}

// exited records the exit of a container whose shim is gone and releases what it held; c.mu is
// held.
func (r *Runtime) exited(c *container) {
	if c.shim != nil {
		_ = c.shim.Wait()
		c.shim = nil
	}
	if c.pidfd != nil {
		c.pidfd.Close()
		c.pidfd = nil
	}
	st := &c.p.Status
	st.ExitCode = -1
	if b, err := os.ReadFile(filepath.Join(c.dir, "exit")); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			st.ExitCode = n
		}
	}
	if st.ExitCode == 255 && c.p.Killed {
		st.ExitCode = 137 // the runtime reports a killed init as an error (runsc)
	}
	if u, oom, err := r.cg.usage(c.id); err == nil {
		st.Usage = u
		st.OOMKilled = oom
	}
	st.State = conman.Exited
	st.Pid = 0
	st.Finished = time.Now()
	r.teardown(c)
	if err := c.save(); err != nil {
		r.log.Warn("conman/oci: save state", "id", c.id, "err", err)
	}
	if c.done != nil {
		select {
		case <-c.done:
		default:
			close(c.done)
		}
	}
}

// teardown removes what a started container held on the host: the runtime's record, the root
// file system mount, the network namespace and the cgroups. It is idempotent; c.mu is held.
func (r *Runtime) teardown(c *container) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.run(ctx, "delete", "--force", c.id); err != nil && !isNotExist(err) {
		r.log.Debug("conman/oci: delete", "id", c.id, "err", err)
	}
	unmountAll(r.rootDir(c))
	unmountAll(filepath.Join(r.runDir, c.id, "netns"))
	// Plain removes: they fail, rather than reach into it, where a mount is still there.
	os.Remove(r.rootDir(c))
	os.Remove(filepath.Join(r.runDir, c.id, "netns"))
	os.Remove(filepath.Join(r.runDir, c.id))
	if err := r.cg.remove(c.id); err != nil {
		r.log.Warn("conman/oci: remove cgroup", "id", c.id, "err", err)
	}
}

func isNotExist(err error) bool {
	s := err.Error()
	return strings.Contains(s, "does not exist") || strings.Contains(s, "not exist") || strings.Contains(s, "not found")
}

// Stop implements conman.Runtime.
func (r *Runtime) Stop(ctx context.Context, id string, grace time.Duration) error {
	c, err := r.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.p.Status.State != conman.Running {
		c.mu.Unlock()
		return nil
	}
	done := c.done
	c.stopping = true
	c.mu.Unlock()
	// SIGTERM goes to the init, which passes it to every process. It is sent again, less and
	// less often, in case it came before the init set its handler (gVisor's init is not
	// visible from the host to check).
	t := time.NewTimer(grace)
	defer t.Stop()
	for again := 50 * time.Millisecond; ; again = min(2*again, time.Second) {
		if _, err := r.run(ctx, "kill", id, "TERM"); err != nil {
			r.log.Debug("conman/oci: kill TERM", "id", id, "err", err)
		}
		resend := time.NewTimer(again)
		select {
		case <-done:
			resend.Stop()
			return nil
		case <-ctx.Done():
			resend.Stop()
			return ctx.Err()
		case <-t.C:
			resend.Stop()
		case <-resend.C:
			continue
		}
		break
	}
	c.mu.Lock()
	c.p.Killed = true
	c.mu.Unlock()
	if _, err := r.run(ctx, "kill", id, "KILL"); err != nil {
		r.log.Debug("conman/oci: kill KILL", "id", id, "err", err)
	}
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
	if c.p.Status.State == conman.Running {
		return fmt.Errorf("%w: %s is running", conman.ErrConflict, id)
	}
	r.teardown(c)
	if err := os.RemoveAll(c.dir); err != nil {
		return fmt.Errorf("oci: remove %s: %w", id, err)
	}
	r.slots.Release(c.p.Slot, id)
	r.mu.Lock()
	delete(r.containers, id)
	r.mu.Unlock()
	return nil
}

// Attach implements conman.Runtime.
func (r *Runtime) Attach(ctx context.Context, id string) (io.ReadCloser, error) {
	c, err := r.get(id)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	if done == nil {
		return nil, fmt.Errorf("%w: %s", conman.ErrNotRunning, id)
	}
	f, err := os.Open(filepath.Join(c.dir, "output.log"))
	if err != nil {
		return nil, fmt.Errorf("oci: output: %w", err)
	}
	return newFollower(f, done), nil
}

// Wait implements conman.Runtime.
func (r *Runtime) Wait(ctx context.Context, id string) (conman.Status, error) {
	c, err := r.get(id)
	if err != nil {
		return conman.Status{}, err
	}
	c.mu.Lock()
	done := c.done
	running := c.p.Status.State == conman.Running
	c.mu.Unlock()
	if running && done != nil {
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
	return r.status(c), nil
}

func (r *Runtime) status(c *container) conman.Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.p.Status
	if st.State == conman.Running {
		if u, _, err := r.cg.usage(c.id); err == nil {
			st.Usage = u
		}
	}
	st.Spec.Env = slices.Clone(st.Spec.Env)
	return st
}

// List implements conman.Runtime.
func (r *Runtime) List(ctx context.Context) ([]conman.Status, error) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, errors.New("oci: runtime closed")
	}
	cs := make([]*container, 0, len(r.containers))
	for _, c := range r.containers {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	sts := make([]conman.Status, 0, len(cs))
	for _, c := range cs {
		sts = append(sts, r.status(c))
	}
	slices.SortFunc(sts, func(a, b conman.Status) int { return strings.Compare(a.ID, b.ID) })
	return sts, nil
}

// Close implements conman.Runtime: it stops watching and leaves the containers running.
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
	close(r.stop)
	for _, c := range cs {
		c.mu.Lock()
		if c.pidfd != nil {
			c.pidfd.Close() // ends its watch
			c.pidfd = nil
		}
		if c.shim != nil {
			// Our child: the host's init reaps it once we are gone.
			_ = c.shim.Process.Release()
			c.shim = nil
		}
		c.mu.Unlock()
	}
	r.wg.Wait()
	os.Remove(r.runDir) // when no container runs
	if r.gvisor {
		// runsc pins an empty network namespace for its gofers at <root>/null-netns (a bind
		// mount), which would keep StateDir from being removed. Running gofers hold their own
		// reference; runsc pins a new one when it next needs it.
		for unix.Unmount(filepath.Join(r.cfg.StateDir, "runtime", "null-netns"), unix.MNT_DETACH) == nil {
		}
	}
	return nil
}

// mkdirTraversable creates dir and makes it and the directories it creates searchable by every
// user (0711).
func mkdirTraversable(dir string) error {
	if _, err := os.Stat(dir); err == nil {
		return os.Chmod(dir, 0o711)
	}
	if err := mkdirTraversable(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return os.Chmod(dir, 0o711)
}

// recover reads back the containers of StateDir.
func (r *Runtime) recover() error {
	ents, err := os.ReadDir(filepath.Join(r.cfg.StateDir, "containers"))
	if err != nil {
		return fmt.Errorf("oci: recover: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || !conman.ValidID(e.Name()) {
			continue
		}
		c := &container{id: e.Name(), dir: filepath.Join(r.cfg.StateDir, "containers", e.Name())}
		b, err := os.ReadFile(filepath.Join(c.dir, "state.json"))
		if err != nil {
			r.log.Warn("conman/oci: recover: skipping container without state", "id", c.id, "err", err)
			continue
		}
		if err := json.Unmarshal(b, &c.p); err != nil || c.p.Status.ID != c.id {
			r.log.Warn("conman/oci: recover: skipping container with bad state", "id", c.id, "err", err)
			continue
		}
		if c.p.Slot >= 0 {
			// Ours already, normally (the reservation outlives us); taken meanwhile only if
			// the host's reservations were lost, then a stopped container takes another.
			slot, err := r.slots.Acquire(c.id, c.p.Slot)
			if err == nil && slot != c.p.Slot && c.p.Status.State == conman.Running {
				r.slots.Release(slot, c.id)
				err = fmt.Errorf("its uid range (slot %d) is reserved by another container", c.p.Slot)
			}
			if err != nil {
				r.log.Error("conman/oci: recover: container left alone", "id", c.id, "err", err)
				continue
			}
			c.p.Slot = slot
		}
		r.containers[c.id] = c
		if c.p.Status.State != conman.Running {
			continue
		}
		c.p.Status.Recovered = true
		c.done = make(chan struct{})
		pidfd, err := pidfdOpen(c.p.ShimPid)
		if err == nil {
			if start, serr := procStartTime(c.p.ShimPid); serr != nil || start != c.p.ShimStart {
				pidfd.Close()
				err = errors.New("shim pid reused")
			}
		}
		if err != nil {
			r.exited(c) // the shim is gone: its exit file says how the container ended
			continue
		}
		// The runtime's own state says whether the container still runs and its init's pid.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		st, serr := r.state(ctx, c.id)
		cancel()
		if serr == nil && st.Pid > 0 {
			c.p.Status.Pid = st.Pid
		}
		c.pidfd = pidfd
		r.wg.Add(1)
		go r.watch(c, pidfd)
	}
	return nil
}

// capOutputs starts the output file of a running container over once it passes
// MaxOutputBytes (the container appends, so it carries on at the new end).
func (r *Runtime) capOutputs() {
	defer r.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
		r.mu.Lock()
		cs := make([]*container, 0, len(r.containers))
		for _, c := range r.containers {
			cs = append(cs, c)
		}
		r.mu.Unlock()
		for _, c := range cs {
			name := filepath.Join(c.dir, "output.log")
			if fi, err := os.Stat(name); err == nil && fi.Size() > r.cfg.MaxOutputBytes {
				_ = os.Truncate(name, 0)
			}
		}
	}
}

// pidfdOpen returns a non-blocking pidfd (readable once the process exits).
func pidfdOpen(pid int) (*os.File, error) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("oci: pidfd of %d: %w", pid, err)
	}
	return os.NewFile(uintptr(fd), "pidfd"), nil
}

// exitedNow reports whether the process of pidfd has exited.
func exitedNow(pidfd *os.File) bool {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return true
	}
	var n int
	_ = rc.Control(func(fd uintptr) {
		n, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
	})
	return n > 0
}

// waitPidfd returns when the process exits or pidfd is closed.
func waitPidfd(pidfd *os.File) {
	rc, err := pidfd.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 0)
		return n > 0 || (err != nil && err != unix.EINTR)
	})
}

// catchesTERM reports whether pid has a SIGTERM handler (SigCgt in /proc/<pid>/status).
func catchesTERM(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<(int(syscall.SIGTERM)-1)) != 0
		}
	}
	return false
}

// procStartTime returns the start time of pid (field 22 of /proc/<pid>/stat).
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("oci: malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("oci: malformed stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// StateDir returns the runtime's absolute state directory (for a new Runtime over the same
// containers).
func (r *Runtime) StateDir() string { return r.cfg.StateDir }
