package conmantest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/switchyard-dev/switchyard/conman"
)

// HostileAttacks are the attacks the isolation suite's hostile program makes from inside a
// container; every one must be blocked. See conman/conmantest/hostile.
var HostileAttacks = []string{
	"root-on-host", "read-host-file", "write-host-dir", "read-neighbour", "env-secret",
	"host-processes", "control-sockets", "tcp-host", "raw-socket", "packet-socket",
	"mknod-block", "mknod-mem", "open-devices", "proc-sys-write", "sys-write", "ptrace",
	"proc-init", "keyring", "module-load", "bpf", "perf", "user-namespace",
	"unshare-umount-proc", "mount", "cgroup-escape", "setns", "kernel-log", "chroot-escape",
}

var (
	hostileOnce sync.Once
	hostileBin  []byte
	hostileErr  error
)

// HostileBinary returns the hostile program (conman/conmantest/hostile), built once per test
// binary with the go command: a static binary (CGO off), so it runs on any root file system.
// End-to-end tests put it into a repl's files and run it through the repl's shell.
func HostileBinary() ([]byte, error) {
	hostileOnce.Do(func() {
		dir, err := os.MkdirTemp("", "conmantest-hostile")
		if err != nil {
			hostileErr = err
			return
		}
		defer os.RemoveAll(dir)
		out := filepath.Join(dir, "hostile")
		cmd := exec.Command("go", "build", "-o", out, "github.com/switchyard-dev/switchyard/conman/conmantest/hostile")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			hostileErr = &buildError{out: string(b), err: err}
			return
		}
		hostileBin, hostileErr = os.ReadFile(out)
	})
	return hostileBin, hostileErr
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string {
	return "build the hostile program: " + e.err.Error() + "\n" + e.out
}

func token(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "switchyard-secret-" + hex.EncodeToString(b)
}

// RunIsolation runs the isolation suite: a hostile program inside a container (its repl's
// own binary, written into its directory) attacks the VM, a neighbouring container and the
// platform, and the suite fails on every attack that is not blocked. The suite also checks the
// host side for each effect (the listener it must not reach, the directory it must not write).
// o.New is required; o.Spec adapts the containers' specs (e.g. a Rootfs); the rest is unused.
//
// The suite needs the go command (it builds the hostile program) and runs only on Linux.
func RunIsolation(t *testing.T, o Options) {
	if runtime.GOOS != "linux" {
		t.Skip("the isolation suite runs on Linux")
	}
	if o.New == nil {
		t.Fatal("conmantest: Options.New is required")
	}
	bin, err := HostileBinary()
	if err != nil {
		t.Fatal(err)
	}
	adapt := o.Spec
	if adapt == nil {
		adapt = func(s conman.Spec) conman.Spec { return s }
	}
	r := o.New(t)
	t.Cleanup(func() { cleanup(t, r) })
	ctx := ctxT(t)

	// The host: a world-readable secret, a world-writable directory, a listener, a process
	// with a marker in its argv, and the secret in the runtime's own environment.
	secret, marker := token(t), token(t)
	open := func() string {
		d, err := os.MkdirTemp("", "conmantest-host")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
		return d
	}
	hostDir, writeDir := open(), open()
	secretFile := filepath.Join(hostDir, "platform-credential")
	if err := os.WriteFile(secretFile, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SWITCHYARD_TEST_HOST_SECRET", secret)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	sleepPath, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	markerProc := &exec.Cmd{Path: sleepPath, Args: []string{marker, "120"}}
	if err := markerProc.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = markerProc.Process.Kill(); _ = markerProc.Wait() }()

	// A neighbour repl with a secret of its own.
	neighbourDir, neighbourSecret := open(), token(t)
	if err := os.WriteFile(filepath.Join(neighbourDir, "secret.txt"), []byte(neighbourSecret), 0o644); err != nil {
		t.Fatal(err)
	}
	start(t, r, "neighbour", adapt(conman.Spec{Dir: neighbourDir, Command: []string{"sleep", "600"}}))

	// The attacker: its own binary in its own directory.
	attackerDir := open()
	if err := os.WriteFile(filepath.Join(attackerDir, "hostile"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	start(t, r, "attacker", adapt(conman.Spec{Dir: attackerDir}))
	st, err := r.Inspect(ctx, "attacker")
	if err != nil {
		t.Fatal(err)
	}
	if !st.Isolated {
		t.Errorf("the container is not isolated: %s", st.Isolation)
	}
	t.Logf("isolation: %s", st.Isolation)

	args := []string{filepath.Join(attackerDir, "hostile"),
		"-secret", secret, "-secret-file", secretFile, "-write-dir", writeDir,
		"-neighbour", neighbourDir, "-neighbour-secret", neighbourSecret,
		"-tcp", ln.Addr().String(), "-marker-reversed", Reverse(marker)}
	p, err := r.Exec(ctx, "attacker", conman.ExecOptions{Args: args})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_ = p.Stdin().Close()
	var stderr syncBuf
	go func() { _, _ = io.Copy(&stderr, p.Stderr()) }()
	seen := map[string]bool{}
	sc := bufio.NewScanner(p.Stdout())
	for sc.Scan() {
		var res struct {
			Attack  string `json:"attack"`
			Blocked bool   `json:"blocked"`
			Detail  string `json:"detail"`
		}
		if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
			t.Errorf("hostile program: unreadable line %q", sc.Text())
			continue
		}
		seen[res.Attack] = true
		if res.Attack == "root-on-host" && o.HostUIDs != nil {
			res.Blocked, res.Detail = rootOnHost(o, r, "attacker", res.Detail)
		}
		switch {
		case res.Attack == "done":
		case res.Blocked:
			t.Logf("blocked %-20s %s", res.Attack, res.Detail)
		default:
			t.Errorf("NOT BLOCKED %s: %s", res.Attack, res.Detail)
		}
	}
	code, err := p.Wait(ctx)
	if err != nil || code != 0 {
		t.Errorf("hostile program exited %d, %v; stderr:\n%s", code, err, stderr.String())
	}
	for _, a := range append(HostileAttacks, "done") {
		if !seen[a] {
			t.Errorf("the hostile program never reported %q (it died or was stopped early)", a)
		}
	}
	// The host's own evidence, whatever the program said.
	if n := accepted.Load(); n > 0 {
		t.Errorf("the host's listener accepted %d connections from inside the container", n)
	}
	if ents, _ := os.ReadDir(writeDir); len(ents) > 0 {
		t.Errorf("the container wrote into a host directory: %v", ents[0].Name())
	}
	if b, _ := os.ReadFile(secretFile); string(b) != secret {
		t.Errorf("the host's secret file changed")
	}
	// The neighbour is unharmed.
	if st, err := r.Inspect(ctx, "neighbour"); err != nil || st.State != conman.Running {
		t.Errorf("the neighbour container: %v %v", st.State, err)
	}
	if b, _ := os.ReadFile(filepath.Join(neighbourDir, "secret.txt")); string(b) != neighbourSecret {
		t.Errorf("the neighbour's file changed")
	}
}

// rootOnHost judges root-on-host by the host uids of the processes acting for the container
// (Options.HostUIDs): blocked when there are some and none is 0.
func rootOnHost(o Options, r conman.Runtime, id, inside string) (bool, string) {
	uids, err := o.HostUIDs(r, id)
	if err != nil {
		return false, "host uids: " + err.Error()
	}
	if len(uids) == 0 {
		return false, "no host process found for the container"
	}
	for _, u := range uids {
		if u == 0 {
			return false, fmt.Sprintf("a host process of the container runs as root (uids %v)", uids)
		}
	}
	return true, fmt.Sprintf("host uids %v (inside: %s)", uids, inside)
}

// Reverse reverses s: the hostile program takes its marker reversed, so its own argv does not
// hold it.
func Reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}
