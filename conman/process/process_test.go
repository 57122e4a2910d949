package process_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/conmantest"
	"github.com/switchyard-dev/switchyard/conman/process"
)

func TestMain(m *testing.M) {
	process.Init() // this test binary is also the containers' init
	goleak.VerifyTestMain(m)
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for namespaces and cgroups")
	}
}

func newRuntime(t *testing.T, cfg process.Config) *process.Runtime {
	t.Helper()
	if cfg.StateDir == "" {
		cfg.StateDir = t.TempDir()
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "switchyard-test-process"
	}
	r, err := process.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t, cfg.StateDir)
		}
		cleanup(t, r)
	})
	return r
}

// cleanup stops and removes every container, then closes the runtime.
func cleanup(t *testing.T, r *process.Runtime) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sts, _ := r.List(ctx)
	for _, st := range sts {
		_ = r.Stop(ctx, st.ID, 0)
		_ = r.Remove(ctx, st.ID)
	}
	require.NoError(t, r.Close())
}

func start(t *testing.T, r conman.Runtime, id string, spec conman.Spec) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.Create(ctx, id, spec))
	require.NoError(t, r.Start(ctx, id))
}

// run execs args without a tty and returns stdout, stderr and the exit code.
func run(t *testing.T, r conman.Runtime, id string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := r.Exec(ctx, id, conman.ExecOptions{Args: args})
	require.NoError(t, err)
	defer p.Close()
	require.NoError(t, p.Stdin().Close())
	var out, errb bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&errb, p.Stderr()); close(done) }()
	_, _ = io.Copy(&out, p.Stdout())
	<-done
	code, err := p.Wait(ctx)
	require.NoError(t, err)
	return out.String(), errb.String(), code
}

func TestNamespaces(t *testing.T) {
	needRoot(t)
	r := newRuntime(t, process.Config{})
	start(t, r, "ns1", conman.Spec{Hostname: "repl-host", Port: 12345, Env: []string{"FOO=bar", "HOST=192.0.2.1"}})

	st, err := r.Inspect(context.Background(), "ns1")
	require.NoError(t, err)
	require.Equal(t, conman.Running, st.State)
	require.True(t, st.Isolated, st.Isolation)
	require.Contains(t, st.Isolation, "sandbox: namespaces user,pid,mnt,uts,ipc,net,cgroup")
	require.NotZero(t, st.Pid)

	tests := []struct {
		name string
		cmd  string
		want string
	}{
		{"pid 1 is the init", "cat /proc/1/cmdline | tr '\\0' ' '", "conman-init "},
		{"own pid namespace", "echo $$", ""},
		{"hostname", "hostname", "repl-host\n"},
		{"env", "echo $FOO $PORT $HOSTNAME", "bar 12345 repl-host\n"},
		{"the web app listens on its own loopback", "echo $HOST", "127.0.0.1\n"},
		{"working directory", "pwd", st.Spec.Dir + "\n"},
		{"own devpts", "ls /dev/pts", "ptmx\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := run(t, r, "ns1", "/bin/sh", "-c", tt.cmd)
			require.Equal(t, 0, code, errOut)
			if tt.want != "" {
				require.Equal(t, tt.want, out)
			}
		})
	}
	// Only the container's processes are visible: init, sh, ps-like listing of /proc.
	out, _, _ := run(t, r, "ns1", "/bin/sh", "-c", "ls -d /proc/[0-9]* | wc -l")
	n, err := strconv.Atoi(strings.TrimSpace(out))
	require.NoError(t, err)
	require.LessOrEqual(t, n, 4, "init, sh, ls, wc") // the host has hundreds
	// The host's hostname did not change.
	h, _ := os.Hostname()
	require.NotEqual(t, "repl-host", h)
}

func TestTTYResize(t *testing.T) {
	needRoot(t)
	r := newRuntime(t, process.Config{})
	start(t, r, "tty1", conman.Spec{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := r.Exec(ctx, "tty1", conman.ExecOptions{Args: []string{"/bin/sh"}, TTY: true, Size: conman.WindowSize{Cols: 100, Rows: 30}})
	require.NoError(t, err)
	defer p.Close()
	require.Nil(t, p.Stderr())
	out := &syncBuffer{}
	copied := make(chan struct{})
	go func() { _, _ = io.Copy(out, p.Stdout()); close(copied) }()

	_, err = io.WriteString(p.Stdin(), "stty size; tty\n")
	require.NoError(t, err)
	waitFor(t, out, "30 100")
	waitFor(t, out, "/dev/pts/0")
	require.NoError(t, p.Resize(conman.WindowSize{Cols: 132, Rows: 43}))
	_, err = io.WriteString(p.Stdin(), "stty size; exit 7\n")
	require.NoError(t, err)
	waitFor(t, out, "43 132")
	code, err := p.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, 7, code)
	<-copied
	require.ErrorIs(t, p.Resize(conman.WindowSize{}), conman.ErrInvalid)
}

func TestMemoryLimitOOMKills(t *testing.T) {
	needRoot(t)
	r := newRuntime(t, process.Config{})
	start(t, r, "oom1", conman.Spec{
		Command: []string{"/bin/sh", "-c", "exec tail /dev/zero"}, // tail buffers lines without end
		Limits:  conman.Limits{MemoryBytes: 32 << 20},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := r.Wait(ctx, "oom1")
	require.NoError(t, err)
	require.Equal(t, conman.Exited, st.State)
	require.Equal(t, 137, st.ExitCode)
	require.True(t, st.OOMKilled)
}

func TestPidsLimitFailsFork(t *testing.T) {
	needRoot(t)
	r := newRuntime(t, process.Config{})
	start(t, r, "pids1", conman.Spec{Limits: conman.Limits{Pids: 24}})
	out, errOut, code := run(t, r, "pids1", "/bin/sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done; echo started $i")
	require.NotEqual(t, "started 40\n", out)
	require.NotEqual(t, 0, code, out)
	require.Contains(t, strings.ToLower(errOut), "fork", errOut)
	st, err := r.Inspect(context.Background(), "pids1")
	require.NoError(t, err)
	require.LessOrEqual(t, st.Usage.Pids, int64(24+12)) // the init's threads are on top
	// The init survived the exhausted limit: the container still runs Execs once pids free up.
	// The init still serves Execs: one more fork fits in its headroom.
	out, _, code = run(t, r, "pids1", "/bin/sh", "-c", "kill -9 -1; echo alive")
	require.Equal(t, 0, code)
	require.Equal(t, "alive\n", out)
}

func TestStopGraceThenKill(t *testing.T) {
	needRoot(t)
	r := newRuntime(t, process.Config{})
	ctx := context.Background()
	// The main process ignores SIGTERM: the grace period ends in SIGKILL.
	start(t, r, "stop1", conman.Spec{Command: []string{"/bin/sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 1; done"}})
	a, err := r.Attach(ctx, "stop1")
	require.NoError(t, err)
	line := make([]byte, 8)
	_, err = io.ReadFull(a, line)
	require.NoError(t, err)
	require.Equal(t, "trapped\n", string(line))
	require.NoError(t, a.Close())
	began := time.Now()
	require.NoError(t, r.Stop(ctx, "stop1", 200*time.Millisecond))
	st, err := r.Inspect(ctx, "stop1")
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(began), 200*time.Millisecond)
	require.Equal(t, conman.Exited, st.State)
	require.Equal(t, 137, st.ExitCode)

	// A container that honours SIGTERM stops within the grace period.
	start(t, r, "stop2", conman.Spec{Command: []string{"/bin/sleep", "60"}})
	began = time.Now()
	require.NoError(t, r.Stop(ctx, "stop2", 10*time.Second))
	require.Less(t, time.Since(began), 5*time.Second)
	st, err = r.Inspect(ctx, "stop2")
	require.NoError(t, err)
	require.Equal(t, 128+int(syscall.SIGTERM), st.ExitCode)

	require.ErrorIs(t, r.Remove(ctx, "nope"), conman.ErrNotFound)
	require.NoError(t, r.Remove(ctx, "stop2"))
	_, err = r.Inspect(ctx, "stop2")
	require.ErrorIs(t, err, conman.ErrNotFound)
}

func TestKillOneInside(t *testing.T) {
	needRoot(t)
	r := newRuntime(t, process.Config{})
	start(t, r, "kill1", conman.Spec{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := r.Exec(ctx, "kill1", conman.ExecOptions{Args: []string{"/bin/sh", "-c", "kill 1; sleep 5"}})
	require.NoError(t, err)
	code, err := p.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, 143, code) // the init hands out exit codes before it leaves
	require.NoError(t, p.Close())
	st, err := r.Wait(ctx, "kill1")
	require.NoError(t, err)
	require.Equal(t, conman.Exited, st.State)
	_, err = r.Exec(ctx, "kill1", conman.ExecOptions{Args: []string{"true"}})
	require.ErrorIs(t, err, conman.ErrNotRunning)
}

func TestRecoverAfterRestart(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	r1, err := process.New(process.Config{StateDir: dir, CgroupParent: "switchyard-test-process"})
	require.NoError(t, err)
	start(t, r1, "rec1", conman.Spec{Port: 20001, Command: []string{"/bin/sh", "-c", "echo hello; exec sleep 600"}})
	start(t, r1, "rec2", conman.Spec{})
	st1, err := r1.Inspect(context.Background(), "rec1")
	require.NoError(t, err)
	require.NoError(t, r1.Close()) // the containers keep running

	r2 := newRuntime(t, process.Config{StateDir: dir})
	sts, err := r2.List(context.Background())
	require.NoError(t, err)
	require.Len(t, sts, 2)
	st, err := r2.Inspect(context.Background(), "rec1")
	require.NoError(t, err)
	require.Equal(t, conman.Running, st.State)
	require.True(t, st.Recovered)
	require.Equal(t, st1.Pid, st.Pid)
	require.Equal(t, 20001, st.Spec.Port)
	out, _, code := run(t, r2, "rec1", "/bin/sh", "-c", "echo $PORT")
	require.Equal(t, 0, code)
	require.Equal(t, "20001\n", out)

	a, err := r2.Attach(context.Background(), "rec1")
	require.NoError(t, err)
	buf := make([]byte, 6)
	_, err = io.ReadFull(a, buf)
	require.NoError(t, err)
	require.Equal(t, "hello\n", string(buf))
	require.NoError(t, a.Close())

	// A recovered container's exit is still noticed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, r2.Stop(ctx, "rec2", 5*time.Second))
	st, err = r2.Inspect(ctx, "rec2")
	require.NoError(t, err)
	require.Equal(t, conman.Exited, st.State)
	require.Equal(t, 143, st.ExitCode)
}

func TestForcedFallback(t *testing.T) {
	r := newRuntime(t, process.Config{Isolation: process.None})
	start(t, r, "plain1", conman.Spec{Hostname: "ignored"})
	st, err := r.Inspect(context.Background(), "plain1")
	require.NoError(t, err)
	require.False(t, st.Isolated)
	require.Contains(t, st.Isolation, "unsandboxed: plain process")
	out, _, code := run(t, r, "plain1", "/bin/sh", "-c", "echo $$")
	require.Equal(t, 0, code)
	require.NotEqual(t, "1\n", out)
}

func TestErrors(t *testing.T) {
	r := newRuntime(t, process.Config{Isolation: process.None})
	ctx := context.Background()
	require.ErrorIs(t, r.Create(ctx, "Bad ID", conman.Spec{}), conman.ErrInvalid)
	require.ErrorIs(t, r.Start(ctx, "missing"), conman.ErrNotFound)
	require.NoError(t, r.Create(ctx, "e1", conman.Spec{}))
	require.ErrorIs(t, r.Create(ctx, "e1", conman.Spec{}), conman.ErrExists)
	_, err := r.Exec(ctx, "e1", conman.ExecOptions{Args: []string{"true"}})
	require.ErrorIs(t, err, conman.ErrNotRunning)
	require.NoError(t, r.Start(ctx, "e1"))
	require.ErrorIs(t, r.Start(ctx, "e1"), conman.ErrConflict)
	require.ErrorIs(t, r.Remove(ctx, "e1"), conman.ErrConflict)
	_, err = r.Exec(ctx, "e1", conman.ExecOptions{})
	require.ErrorIs(t, err, conman.ErrInvalid)
	_, err = r.Exec(ctx, "e1", conman.ExecOptions{Args: []string{"/no/such/binary"}})
	require.Error(t, err)
	// A main command that cannot start fails Start.
	require.NoError(t, r.Create(ctx, "e2", conman.Spec{Command: []string{"no-such-command-xyz"}}))
	err = r.Start(ctx, "e2")
	require.Error(t, err)
	require.Contains(t, err.Error(), "not found")
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// waitFor polls out until it contains want, failing after 10 s.
func waitFor(t *testing.T, out interface{ String() string }, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %q in %q", want, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dumpLogs(t *testing.T, dir string) {
	logs, _ := filepath.Glob(filepath.Join(dir, "*", "output.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		t.Logf("%s:\n%s", l, b)
	}
}

func TestConformance(t *testing.T) {
	newRT := func(iso process.Isolation) func(t *testing.T) conman.Runtime {
		return func(t *testing.T) conman.Runtime {
			r, err := process.New(process.Config{StateDir: t.TempDir(), CgroupParent: "switchyard-test-process", Isolation: iso})
			require.NoError(t, err)
			return r
		}
	}
	reopen := func(iso process.Isolation) func(t *testing.T, old conman.Runtime) conman.Runtime {
		return func(t *testing.T, old conman.Runtime) conman.Runtime {
			st, err := old.(*process.Runtime).StateDir(), error(nil)
			require.NoError(t, err)
			r, err := process.New(process.Config{StateDir: st, CgroupParent: "switchyard-test-process", Isolation: iso})
			require.NoError(t, err)
			return r
		}
	}
	t.Run("sandbox", func(t *testing.T) {
		needRoot(t)
		conmantest.Run(t, conmantest.Options{New: newRT(process.Sandbox), Reopen: reopen(process.Sandbox), Isolated: true, Limits: true})
	})
	t.Run("plain", func(t *testing.T) {
		conmantest.Run(t, conmantest.Options{New: newRT(process.None), Reopen: reopen(process.None)})
	})
}

// TestUnprivileged runs TestUnprivilegedChild as an unprivileged user (nobody): the runtime
// builds the sandbox in an unprivileged user namespace mapping that one uid, without cgroups.
func TestUnprivileged(t *testing.T) {
	needRoot(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "conman-unpriv")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	bin := filepath.Join(dir, "process.test")
	b, err := os.ReadFile(exe)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(bin, b, 0o755))
	state := filepath.Join(dir, "state")
	require.NoError(t, os.Mkdir(state, 0o755))
	require.NoError(t, os.Chown(state, 65534, 65534))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^TestUnprivilegedChild$", "-test.v", "-test.count=1")
	cmd.Dir = dir
	cmd.Env = []string{"CONMAN_TEST_UNPRIVILEGED_STATE=" + state, "PATH=/usr/bin:/bin", "HOME=" + dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "--- PASS: TestUnprivilegedChild", "%s", out)
	require.Contains(t, string(out), "no cgroups, containers run without resource limits", "the missing limits are logged")
}

func TestUnprivilegedChild(t *testing.T) {
	state := os.Getenv("CONMAN_TEST_UNPRIVILEGED_STATE")
	if state == "" {
		t.Skip("run by TestUnprivileged")
	}
	require.NotEqual(t, 0, os.Geteuid(), "must run unprivileged")
	r, err := process.New(process.Config{StateDir: state})
	require.NoError(t, err)
	t.Cleanup(func() { cleanup(t, r) })
	start(t, r, "nobody1", conman.Spec{Hostname: "ignored", Limits: conman.Limits{MemoryBytes: 32 << 20}})
	st, err := r.Inspect(context.Background(), "nobody1")
	require.NoError(t, err)
	require.True(t, st.Isolated, st.Isolation)
	require.Contains(t, st.Isolation, "ids 0-0 are 65534-65534 on the VM")
	require.Contains(t, st.Isolation, "no cgroups (not root)")
	t.Log("isolation:", st.Isolation)
	out, _, code := run(t, r, "nobody1", "/bin/sh", "-c", "id -u; cat /proc/self/uid_map")
	require.Equal(t, 0, code)
	require.Regexp(t, `^0\n\s+0\s+65534\s+1\n$`, out, "root inside is nobody outside")

	// The shell on a pty works in the unprivileged sandbox too.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := r.Exec(ctx, "nobody1", conman.ExecOptions{Args: []string{"/bin/sh"}, TTY: true})
	require.NoError(t, err)
	defer p.Close()
	buf := &syncBuffer{}
	go func() { _, _ = io.Copy(buf, p.Stdout()) }()
	_, _ = io.WriteString(p.Stdin(), "stty size; exit\n")
	waitFor(t, buf, "24 80")
	code, err = p.Wait(ctx)
	require.NoError(t, err)
	require.Equal(t, 0, code)
	require.NoError(t, r.Stop(ctx, "nobody1", 5*time.Second))
	st, err = r.Inspect(ctx, "nobody1")
	require.NoError(t, err)
	require.Equal(t, 143, st.ExitCode)
}

// TestRecoverAcrossProcesses: a conman process starts containers and dies; a new process
// recovers them from the state directory (its inits were re-parented, so the exit code comes
// from exit.json).
func TestRecoverAcrossProcesses(t *testing.T) {
	needRoot(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestRecoverChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "CONMAN_TEST_RECOVER_STATE="+dir)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Contains(t, string(out), "--- PASS: TestRecoverChild", "%s", out)

	r := newRuntime(t, process.Config{StateDir: dir})
	st, err := r.Inspect(ctx, "across1")
	require.NoError(t, err)
	require.Equal(t, conman.Running, st.State)
	require.True(t, st.Recovered)
	out2, _, code := run(t, r, "across1", "/bin/sh", "-c", "echo $PORT; hostname")
	require.Equal(t, 0, code)
	require.Equal(t, "20003\nacross1\n", out2)
	require.NoError(t, r.Stop(ctx, "across1", 5*time.Second))
	st, err = r.Inspect(ctx, "across1")
	require.NoError(t, err)
	require.Equal(t, conman.Exited, st.State)
	require.Equal(t, 143, st.ExitCode, "read from exit.json: the init is not our child")
}

func TestRecoverChild(t *testing.T) {
	dir := os.Getenv("CONMAN_TEST_RECOVER_STATE")
	if dir == "" {
		t.Skip("run by TestRecoverAcrossProcesses")
	}
	r, err := process.New(process.Config{StateDir: dir, CgroupParent: "switchyard-test-process"})
	require.NoError(t, err)
	start(t, r, "across1", conman.Spec{Port: 20003, Command: []string{"sleep", "600"}})
	require.NoError(t, r.Close()) // and the process exits with the container running
}

func TestOutputIsCapped(t *testing.T) {
	r := newRuntime(t, process.Config{Isolation: process.None, MaxOutputBytes: 64 << 10})
	// 1 MiB of output, then a marker; the file never holds more than the cap.
	start(t, r, "chatty1", conman.Spec{Command: []string{"/bin/sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo the-end"}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := r.Wait(ctx, "chatty1")
	require.NoError(t, err)
	require.Equal(t, 0, st.ExitCode)
	a, err := r.Attach(ctx, "chatty1")
	require.NoError(t, err)
	b, err := io.ReadAll(a)
	require.NoError(t, err)
	require.NoError(t, a.Close())
	require.LessOrEqual(t, len(b), 64<<10+100)
	require.True(t, strings.HasSuffix(string(b), "the-end\n"), "the newest output is kept")
	require.Contains(t, string(b), "earlier output dropped")
}

// TestIsolation runs conmantest's isolation suite: a hostile program inside a sandboxed
// container attacks the VM, a neighbour and the platform, and must get nowhere.
func TestIsolation(t *testing.T) {
	needRoot(t)
	conmantest.RunIsolation(t, conmantest.Options{New: func(t *testing.T) conman.Runtime {
		r, err := process.New(process.Config{StateDir: t.TempDir(), CgroupParent: "switchyard-test-process"})
		require.NoError(t, err)
		return r
	}})
}

// TestIsolationSuiteCatchesPlainProcesses: the isolation suite is not a formality. Run against
// unsandboxed plain processes (Isolation None), it must fail, naming the attacks that got out.
func TestIsolationSuiteCatchesPlainProcesses(t *testing.T) {
	needRoot(t)
	exe, err := os.Executable()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, "-test.run=^TestIsolationPlainChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "CONMAN_TEST_ISOLATION_PLAIN=1")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the suite passed plain processes:\n%s", out)
	for _, a := range []string{"root-on-host", "read-host-file", "write-host-dir", "read-neighbour", "tcp-host", "host-processes"} {
		require.Contains(t, string(out), "NOT BLOCKED "+a+":", "%s", out)
	}
}

func TestIsolationPlainChild(t *testing.T) {
	if os.Getenv("CONMAN_TEST_ISOLATION_PLAIN") == "" {
		t.Skip("run by TestIsolationSuiteCatchesPlainProcesses")
	}
	conmantest.RunIsolation(t, conmantest.Options{New: func(t *testing.T) conman.Runtime {
		r, err := process.New(process.Config{StateDir: t.TempDir(), Isolation: process.None})
		require.NoError(t, err)
		return r
	}})
}
