// Package conmantest is the conformance suite for conman.Runtime implementations. A backend
// (conman/process today, a Docker or Firecracker backend later) passes it by calling Run from a
// test:
//
//	func TestConformance(t *testing.T) {
//		conmantest.Run(t, conmantest.Options{
//			New: func(t *testing.T) conman.Runtime { ... },
//			Isolated: true, Limits: true,
//		})
//	}
//
// The suite runs real processes through the runtime and needs /bin/sh, sleep, cat and stty in
// the containers. Each subtest gets a fresh Runtime from New; the suite stops and removes what it
// created and closes the runtime.
package conmantest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
)

// Options configure the suite for one runtime.
type Options struct {
	// New returns a fresh Runtime for a subtest. Required.
	New func(t *testing.T) conman.Runtime
	// Reopen, if set, returns a new Runtime over the state of old, which the suite has closed
	// with containers running; the recovery test runs only when it is set.
	Reopen func(t *testing.T, old conman.Runtime) conman.Runtime
	// Isolated says containers get their own PID and UTS namespaces (PID 1 is the container's
	// init; the hostname is Spec.Hostname): the isolation tests run only when it is set.
	Isolated bool
	// Limits says the runtime enforces Spec.Limits: the memory limit test runs only when set.
	Limits bool
	// Spec, if set, adapts every spec the isolation suite creates (a runtime that needs an
	// image sets Rootfs or Image here). Nil uses the specs as they are.
	Spec func(conman.Spec) conman.Spec
	// HostUIDs, if set, returns the host uids (real, effective, saved and file-system) of
	// every host process that acts for container id. The isolation suite then judges
	// root-on-host on the host, by these: a runtime whose kernel is a user-space one (gVisor's
	// sentry) shows the container a root user namespace of its own, an identity uid_map that
	// says nothing of the host.
	HostUIDs func(r conman.Runtime, id string) ([]int, error)
}

// Run runs the conformance suite.
func Run(t *testing.T, o Options) {
	if o.New == nil {
		t.Fatal("conmantest: Options.New is required")
	}
	tests := []struct {
		name string
		fn   func(*testing.T, conman.Runtime, Options)
		skip bool
	}{
		{"Lifecycle", testLifecycle, false},
		{"Errors", testErrors, false},
		{"ExecPipes", testExecPipes, false},
		{"ExecTTY", testExecTTY, false},
		{"Environment", testEnvironment, false},
		{"MainCommand", testMainCommand, false},
		{"StopGraceThenKill", testStopGrace, false},
		{"ProcessSignalAndClose", testProcessSignal, false},
		{"Isolation", testIsolation, !o.Isolated},
		{"MemoryLimit", testMemoryLimit, !o.Limits},
		{"Recover", testRecover, o.Reopen == nil},
		{"HandoffProcess", testHandoff, o.Reopen == nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.skip {
				t.Skip("not supported by this runtime (Options)")
			}
			r := o.New(t)
			t.Cleanup(func() { cleanup(t, r) })
			tt.fn(t, r, o)
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func cleanup(t *testing.T, r conman.Runtime) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sts, _ := r.List(ctx)
	for _, st := range sts {
		_ = r.Stop(ctx, st.ID, 0)
		_ = r.Remove(ctx, st.ID)
	}
	if err := r.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func start(t *testing.T, r conman.Runtime, id string, spec conman.Spec) {
	t.Helper()
	ctx := ctxT(t)
	if err := r.Create(ctx, id, spec); err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
	if err := r.Start(ctx, id); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
}

// Exec runs args without a tty, feeding stdin, and returns stdout, stderr and the exit code.
// Backends' own tests may use it.
func Exec(t *testing.T, r conman.Runtime, id, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx := ctxT(t)
	p, err := r.Exec(ctx, id, conman.ExecOptions{Args: args})
	if err != nil {
		t.Fatalf("Exec(%s, %q): %v", id, args, err)
	}
	defer p.Close()
	go func() {
		_, _ = io.WriteString(p.Stdin(), stdin)
		_ = p.Stdin().Close()
	}()
	var out, errb bytes.Buffer
	done := make(chan struct{})
	go func() { _, _ = io.Copy(&errb, p.Stderr()); close(done) }()
	_, _ = io.Copy(&out, p.Stdout())
	<-done
	code, err := p.Wait(ctx)
	if err != nil {
		t.Fatalf("Wait: %v", err)
	}
	return out.String(), errb.String(), code
}

func mustState(t *testing.T, r conman.Runtime, id string, want conman.State) conman.Status {
	t.Helper()
	st, err := r.Inspect(ctxT(t), id)
	if err != nil {
		t.Fatalf("Inspect(%s): %v", id, err)
	}
	if st.State != want {
		t.Fatalf("Inspect(%s).State = %s, want %s", id, st.State, want)
	}
	return st
}

func testLifecycle(t *testing.T, r conman.Runtime, _ Options) {
	ctx := ctxT(t)
	if err := r.Create(ctx, "life1", conman.Spec{Port: 8080}); err != nil {
		t.Fatal(err)
	}
	st := mustState(t, r, "life1", conman.Created)
	if st.ID != "life1" || st.Spec.Port != 8080 || st.Created.IsZero() {
		t.Fatalf("Created status = %+v", st)
	}
	if err := r.Start(ctx, "life1"); err != nil {
		t.Fatal(err)
	}
	st = mustState(t, r, "life1", conman.Running)
	if st.Pid <= 0 || st.Started.IsZero() || st.Isolation == "" {
		t.Fatalf("Running status = %+v", st)
	}
	sts, err := r.List(ctx)
	if err != nil || len(sts) != 1 || sts[0].ID != "life1" {
		t.Fatalf("List = %+v, %v", sts, err)
	}
	if err := r.Stop(ctx, "life1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	st = mustState(t, r, "life1", conman.Exited)
	if st.Finished.IsZero() {
		t.Fatalf("Exited status = %+v", st)
	}
	if err := r.Stop(ctx, "life1", time.Second); err != nil {
		t.Fatalf("Stop of an exited container: %v", err)
	}
	if err := r.Remove(ctx, "life1"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Inspect(ctx, "life1"); !errors.Is(err, conman.ErrNotFound) {
		t.Fatalf("Inspect after Remove: %v, want ErrNotFound", err)
	}
	// The ID can be used again.
	start(t, r, "life1", conman.Spec{})
	mustState(t, r, "life1", conman.Running)
}

func testErrors(t *testing.T, r conman.Runtime, _ Options) {
	ctx := ctxT(t)
	check := func(what string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	}
	for _, id := range []string{"", "UPPER", "a/b", "../x", strings.Repeat("a", 64), "-lead"} {
		check("Create("+id+")", r.Create(ctx, id, conman.Spec{}), conman.ErrInvalid)
	}
	check("Start(missing)", r.Start(ctx, "missing"), conman.ErrNotFound)
	check("Stop(missing)", r.Stop(ctx, "missing", 0), conman.ErrNotFound)
	check("Remove(missing)", r.Remove(ctx, "missing"), conman.ErrNotFound)
	_, err := r.Inspect(ctx, "missing")
	check("Inspect(missing)", err, conman.ErrNotFound)
	_, err = r.Wait(ctx, "missing")
	check("Wait(missing)", err, conman.ErrNotFound)
	if err := r.Create(ctx, "err1", conman.Spec{}); err != nil {
		t.Fatal(err)
	}
	check("Create twice", r.Create(ctx, "err1", conman.Spec{}), conman.ErrExists)
	_, err = r.Exec(ctx, "err1", conman.ExecOptions{Args: []string{"true"}})
	check("Exec before Start", err, conman.ErrNotRunning)
	if err := r.Start(ctx, "err1"); err != nil {
		t.Fatal(err)
	}
	check("Start twice", r.Start(ctx, "err1"), conman.ErrConflict)
	check("Remove running", r.Remove(ctx, "err1"), conman.ErrConflict)
	_, err = r.Exec(ctx, "err1", conman.ExecOptions{})
	check("Exec without Args", err, conman.ErrInvalid)
	if _, err := r.Exec(ctx, "err1", conman.ExecOptions{Args: []string{"/no/such/program"}}); err == nil {
		t.Error("Exec of a missing program succeeded")
	}
	p, err := r.Exec(ctx, "err1", conman.ExecOptions{Args: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	check("Resize without tty", p.Resize(conman.WindowSize{Cols: 80, Rows: 24}), conman.ErrNoTTY)
	p.Close()
	if err := r.Create(ctx, "err2", conman.Spec{Command: []string{"/no/such/program"}}); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx, "err2"); err == nil {
		t.Error("Start with a missing main program succeeded")
	}
}

func testExecPipes(t *testing.T, r conman.Runtime, _ Options) {
	start(t, r, "pipes1", conman.Spec{})
	out, errOut, code := Exec(t, r, "pipes1", "", "/bin/sh", "-c", "echo out; echo err >&2; exit 3")
	if out != "out\n" || errOut != "err\n" || code != 3 {
		t.Fatalf("got %q %q %d", out, errOut, code)
	}
	out, _, code = Exec(t, r, "pipes1", "line one\nline two\n", "cat")
	if out != "line one\nline two\n" || code != 0 {
		t.Fatalf("cat: %q %d", out, code)
	}
}

func testExecTTY(t *testing.T, r conman.Runtime, _ Options) {
	start(t, r, "tty1", conman.Spec{})
	ctx := ctxT(t)
	p, err := r.Exec(ctx, "tty1", conman.ExecOptions{Args: []string{"/bin/sh"}, TTY: true, Size: conman.WindowSize{Cols: 91, Rows: 27}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Stderr() != nil {
		t.Error("Stderr with a tty is not nil")
	}
	out := &syncBuf{}
	go func() { _, _ = io.Copy(out, p.Stdout()) }()
	_, _ = io.WriteString(p.Stdin(), "stty size; [ -t 0 ] && echo is-a-tty\n")
	waitFor(t, out, "27 91")
	waitFor(t, out, "is-a-tty")
	if err := p.Resize(conman.WindowSize{Cols: 132, Rows: 43}); err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(p.Stdin(), "stty size; exit 5\n")
	waitFor(t, out, "43 132")
	code, err := p.Wait(ctx)
	if err != nil || code != 5 {
		t.Fatalf("Wait = %d, %v; want 5", code, err)
	}
}

func testEnvironment(t *testing.T, r conman.Runtime, _ Options) {
	dir := t.TempDir()
	start(t, r, "env1", conman.Spec{Port: 23456, Env: []string{"GREETING=hello"}, Dir: dir + "/work"})
	out, _, _ := Exec(t, r, "env1", "", "/bin/sh", "-c", `echo "$GREETING $PORT"; pwd`)
	if want := "hello 23456\n" + dir + "/work\n"; out != want {
		t.Fatalf("got %q, want %q", out, want)
	}
	p, err := r.Exec(ctxT(t), "env1", conman.ExecOptions{Args: []string{"/bin/sh", "-c", "echo $EXTRA; pwd"}, Env: []string{"EXTRA=x"}, Dir: "/"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	b, _ := io.ReadAll(p.Stdout())
	if string(b) != "x\n/\n" {
		t.Fatalf("exec env/dir: %q", b)
	}
}

func testMainCommand(t *testing.T, r conman.Runtime, _ Options) {
	start(t, r, "main1", conman.Spec{Command: []string{"/bin/sh", "-c", "echo started; echo oops >&2; sleep 0.2; exit 42"}})
	ctx := ctxT(t)
	a, err := r.Attach(ctx, "main1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(a)
	a.Close()
	if err != nil {
		t.Fatalf("Attach read: %v", err)
	}
	if !strings.Contains(string(b), "started\n") || !strings.Contains(string(b), "oops\n") {
		t.Fatalf("Attach output %q", b)
	}
	st, err := r.Wait(ctx, "main1")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != conman.Exited || st.ExitCode != 42 {
		t.Fatalf("Wait = %s %d, want exited 42", st.State, st.ExitCode)
	}
	if _, err := r.Exec(ctx, "main1", conman.ExecOptions{Args: []string{"true"}}); !errors.Is(err, conman.ErrNotRunning) {
		t.Fatalf("Exec in an exited container: %v", err)
	}
}

func testStopGrace(t *testing.T, r conman.Runtime, _ Options) {
	ctx := ctxT(t)
	start(t, r, "grace1", conman.Spec{Command: []string{"/bin/sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 1; done"}})
	a, err := r.Attach(ctx, "grace1")
	if err != nil {
		t.Fatal(err)
	}
	line := make([]byte, 8)
	if _, err := io.ReadFull(a, line); err != nil || string(line) != "trapped\n" {
		t.Fatalf("Attach: %q %v", line, err)
	}
	a.Close()
	began := time.Now()
	if err := r.Stop(ctx, "grace1", 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(began); el < 300*time.Millisecond {
		t.Errorf("Stop returned after %v, before the grace period", el)
	}
	if st := mustState(t, r, "grace1", conman.Exited); st.ExitCode != 137 {
		t.Errorf("exit code %d, want 137", st.ExitCode)
	}
	start(t, r, "grace2", conman.Spec{Command: []string{"sleep", "600"}})
	began = time.Now()
	if err := r.Stop(ctx, "grace2", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(began); el > 10*time.Second {
		t.Errorf("a SIGTERM-honouring container took %v to stop", el)
	}
	if st := mustState(t, r, "grace2", conman.Exited); st.ExitCode != 143 {
		t.Errorf("exit code %d, want 143", st.ExitCode)
	}
}

func testProcessSignal(t *testing.T, r conman.Runtime, _ Options) {
	start(t, r, "sig1", conman.Spec{})
	ctx := ctxT(t)
	p, err := r.Exec(ctx, "sig1", conman.ExecOptions{Args: []string{"sleep", "600"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	code, err := p.Wait(ctx)
	if err != nil || code != 143 {
		t.Fatalf("Wait = %d, %v; want 143", code, err)
	}
	p.Close()
	// Close kills a running process.
	p, err = r.Exec(ctx, "sig1", conman.ExecOptions{Args: []string{"/bin/sh", "-c", "echo $$; exec sleep 600"}})
	if err != nil {
		t.Fatal(err)
	}
	pid := make([]byte, 16)
	n, _ := p.Stdout().Read(pid)
	p.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, _, code := Exec(t, r, "sig1", "", "kill", "-0", strings.TrimSpace(string(pid[:n])))
		if code != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("process still alive after Close")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testIsolation(t *testing.T, r conman.Runtime, _ Options) {
	start(t, r, "iso1", conman.Spec{Hostname: "iso-host"})
	st := mustState(t, r, "iso1", conman.Running)
	if !st.Isolated {
		t.Fatalf("Isolated = false: %s", st.Isolation)
	}
	out, _, _ := Exec(t, r, "iso1", "", "hostname")
	if out != "iso-host\n" {
		t.Errorf("hostname = %q", out)
	}
	out, _, _ = Exec(t, r, "iso1", "", "/bin/sh", "-c", "echo $$; test -d /proc/1 && echo has-init")
	f := strings.Fields(out)
	if len(f) != 2 || f[0] == "1" || f[1] != "has-init" || len(f[0]) > 3 {
		t.Errorf("pid namespace: %q (want a small pid, not 1, and a PID 1)", out)
	}
}

func testMemoryLimit(t *testing.T, r conman.Runtime, _ Options) {
	start(t, r, "oom1", conman.Spec{
		Command: []string{"/bin/sh", "-c", "exec tail /dev/zero"},
		Limits:  conman.Limits{MemoryBytes: 32 << 20},
	})
	st, err := r.Wait(ctxT(t), "oom1")
	if err != nil {
		t.Fatal(err)
	}
	if st.ExitCode != 137 || !st.OOMKilled {
		t.Fatalf("exit %d oom %v, want 137 true", st.ExitCode, st.OOMKilled)
	}
}

func testRecover(t *testing.T, r conman.Runtime, o Options) {
	start(t, r, "rec1", conman.Spec{Port: 20002})
	before := mustState(t, r, "rec1", conman.Running)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := o.Reopen(t, r)
	t.Cleanup(func() { cleanup(t, r2) })
	st := mustState(t, r2, "rec1", conman.Running)
	if st.Pid != before.Pid || st.Spec.Port != 20002 || !st.Recovered {
		t.Fatalf("recovered %+v, before %+v", st, before)
	}
	if out, _, _ := Exec(t, r2, "rec1", "", "/bin/sh", "-c", "echo $PORT"); out != "20002\n" {
		t.Fatalf("exec after recovery: %q", out)
	}
	ctx := ctxT(t)
	if err := r2.Stop(ctx, "rec1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	mustState(t, r2, "rec1", conman.Exited)
}

// testHandoff: a TTY process handed off (conman.Handoffer) survives its Runtime and is adopted
// (conman.Adopter) by the next one with its shell state. Skipped for runtimes whose processes
// are not Handoffers.
func testHandoff(t *testing.T, r conman.Runtime, o Options) {
	start(t, r, "ho1", conman.Spec{})
	ctx := ctxT(t)
	p, err := r.Exec(ctx, "ho1", conman.ExecOptions{Args: []string{"/bin/sh"}, TTY: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ho, ok := p.(conman.Handoffer)
	if !ok {
		t.Skipf("%T is not a conman.Handoffer", p)
	}
	out := &syncBuf{}
	readErr := make(chan error, 1)
	go func() { _, err := io.Copy(out, p.Stdout()); readErr <- err }()
	_, _ = io.WriteString(p.Stdin(), "X=41; cd /tmp; echo READY-$X\n")
	waitFor(t, out, "READY-41")
	h, err := ho.Handoff()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-readErr; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read of Stdout after Handoff ended with %v, want os.ErrDeadlineExceeded", err)
	}
	p.Close() // our copy only: the process lives on
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r2 := o.Reopen(t, r)
	t.Cleanup(func() { cleanup(t, r2) })
	ad, ok := r2.(conman.Adopter)
	if !ok {
		t.Fatalf("%T hands processes off but is not a conman.Adopter", r2)
	}
	if _, err := ad.AdoptProcess(ctx, "ho1", conman.ProcessHandoff{State: []byte("{}")}); !errors.Is(err, conman.ErrInvalid) {
		t.Errorf("AdoptProcess of garbage = %v, want ErrInvalid", err)
	}
	p2, err := ad.AdoptProcess(ctx, "ho1", h)
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	out2 := &syncBuf{}
	go func() { _, _ = io.Copy(out2, p2.Stdout()) }()
	_, _ = io.WriteString(p2.Stdin(), "echo $((X+1)) $(pwd)\n")
	waitFor(t, out2, "42 /tmp")
	_, _ = io.WriteString(p2.Stdin(), "exit 3\n")
	if code, err := p2.Wait(ctx); err != nil || code != 3 {
		t.Fatalf("Wait = %d, %v; want 3", code, err)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, s stringer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %q in %q", want, s.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type stringer interface{ String() string }
