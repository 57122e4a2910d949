//go:build linux

package oci_test

import (
	"context"
	"fmt"
	"io"
	"net"
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
	"github.com/switchyard-dev/switchyard/conman/oci"
	"github.com/switchyard-dev/switchyard/conman/process"
	"github.com/switchyard-dev/switchyard/internal/runscbin"
)

func TestMain(m *testing.M) {
	process.Init() // the benchmarks run conman/process's sandbox side by side
	code := m.Run()
	if baseDir != "" {
		os.RemoveAll(baseDir)
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

var (
	baseOnce  sync.Once
	baseDir   string
	baseImage string // "<layout>@base"
	baseErr   error
)

// base writes, once per test binary, a busybox image layout the runtimes unpack.
func base(t testing.TB) string {
	t.Helper()
	baseOnce.Do(func() {
		bb, err := exec.LookPath("busybox")
		if err != nil {
			baseErr = fmt.Errorf("busybox (busybox-static) not installed: %w", err)
			return
		}
		if baseDir, baseErr = os.MkdirTemp("", "oci-test-"); baseErr != nil {
			return
		}
		root := filepath.Join(baseDir, "rootfs")
		if baseErr = oci.BusyboxRootfs(root, bb); baseErr != nil {
			return
		}
		layout := filepath.Join(baseDir, "layout")
		if _, baseErr = oci.WriteImage(layout, "base", root); baseErr != nil {
			return
		}
		baseImage = layout + "@base"
	})
	if baseErr != nil {
		t.Skip(baseErr)
	}
	return baseImage
}

// runtimes are the OCI runtime binaries the tests run, with their flags: Debian's runc, and
// gVisor's runsc built by .ci/run (runscbin) on its default platform, systrap.
var runtimes = []struct {
	name string
	args []string
}{
	{"runc", nil},
	{"runsc", nil},
}

// binaryOf finds the runtime binary name: runc on the PATH, runsc as runscbin finds it. In CI
// a missing one fails the test; elsewhere it skips.
func binaryOf(t testing.TB, name string) string {
	t.Helper()
	var p string
	var err error
	if name == "runsc" {
		p, err = runscbin.Path()
	} else if p, err = exec.LookPath(name); err != nil {
		err = fmt.Errorf("%s not installed (apt-get install %s)", name, name)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	return p
}

func newRuntime(t *testing.T, name string, args []string, stateDir string) *oci.Runtime {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	binary := binaryOf(t, name)
	image := base(t)
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	r, err := oci.New(oci.Config{Binary: binary, Args: args, StateDir: stateDir, Image: image, CgroupParent: "switchyard-test-oci/" + name})
	require.NoError(t, err)
	return r
}

func TestConformance(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			conmantest.Run(t, conmantest.Options{
				New: func(t *testing.T) conman.Runtime {
					r := newRuntime(t, rt.name, rt.args, "")
					t.Cleanup(func() {
						if t.Failed() {
							dumpLogs(t, r)
						}
					})
					return r
				},
				Reopen: func(t *testing.T, old conman.Runtime) conman.Runtime {
					return newRuntime(t, rt.name, rt.args, old.(*oci.Runtime).StateDir())
				},
				Isolated: true,
				Limits:   true,
			})
		})
	}
}

func dumpLogs(t *testing.T, r *oci.Runtime) {
	t.Helper()
	_ = filepath.WalkDir(filepath.Join(r.StateDir(), "containers"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.HasSuffix(p, ".log") || filepath.Base(p) == "exit") {
			b, _ := os.ReadFile(p)
			if len(b) > 4096 {
				b = b[len(b)-4096:]
			}
			t.Logf("%s:\n%s", p, b)
		}
		return nil
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func exec1(t *testing.T, r conman.Runtime, id string, args ...string) (string, int) {
	t.Helper()
	out, errOut, code := conmantest.Exec(t, r, id, "", args...)
	return out + errOut, code
}

func startT(t *testing.T, r conman.Runtime, id string, spec conman.Spec) {
	t.Helper()
	ctx := ctxT(t)
	require.NoError(t, r.Create(ctx, id, spec))
	require.NoError(t, r.Start(ctx, id))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = r.Stop(ctx, id, 0)
		_ = r.Remove(ctx, id)
	})
}

// TestDialContainer: the web port is reached inside the container's network namespace and not
// on the VM's.
func TestDialContainer(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			r := newRuntime(t, rt.name, rt.args, "")
			t.Cleanup(func() { r.Close() })
			const port = 18099
			startT(t, r, "web1", conman.Spec{Port: port, Command: []string{"/bin/sh", "-c",
				`mkdir -p /tmp/www && echo hello-$HOSTNAME > /tmp/www/index.html && exec httpd -f -p 127.0.0.1:$PORT -h /tmp/www`}})
			ctx := ctxT(t)
			var body string
			deadline := time.Now().Add(20 * time.Second)
			for {
				conn, err := r.DialContainer(ctx, "web1", port)
				if err == nil {
					_, _ = io.WriteString(conn, "GET / HTTP/1.0\r\n\r\n")
					b, _ := io.ReadAll(conn)
					conn.Close()
					body = string(b)
					if strings.Contains(body, "hello-web1") {
						break
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("no answer on the container's port: %v %q", err, body)
				}
				time.Sleep(20 * time.Millisecond)
			}
			var d net.Dialer
			if c, err := d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
				c.Close()
				t.Fatal("the container's port is reachable on the VM's loopback")
			}
			_, err := r.DialContainer(ctx, "missing", port)
			require.ErrorIs(t, err, conman.ErrNotFound)
		})
	}
}

// TestSandbox checks the layers of each container's sandbox from inside it.
func TestSandbox(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			r := newRuntime(t, rt.name, rt.args, "")
			t.Cleanup(func() { r.Close() })
			home := t.TempDir()
			startT(t, r, "box1", conman.Spec{Hostname: "box-host", Dir: home + "/repl"})
			startT(t, r, "box2", conman.Spec{})
			check := func(what string, want string, args ...string) {
				t.Helper()
				out, _ := exec1(t, r, "box1", args...)
				if strings.TrimSpace(out) != want {
					t.Errorf("%s: got %q, want %q", what, strings.TrimSpace(out), want)
				}
			}
			fails := func(what string, args ...string) {
				t.Helper()
				if out, code := exec1(t, r, "box1", args...); code == 0 {
					t.Errorf("%s succeeded: %q", what, out)
				}
			}
			// Docker's default capabilities less NET_RAW and MKNOD; under gVisor the repl's
			// processes also lack AUDIT_WRITE, which keeps them from the init's /proc entries.
			caps := "00000000a00405fb"
			if rt.name == "runsc" {
				caps = "00000000800405fb"
			}
			check("CapEff", caps, "/bin/sh", "-c", "grep CapEff /proc/self/status | cut -f2")
			check("CapBnd", caps, "/bin/sh", "-c", "grep CapBnd /proc/self/status | cut -f2")
			// Read-only image, writable /tmp and home, hostname in /etc/hosts.
			fails("write to the image", "touch", "/bin/evil")
			check("write to /tmp and home", "ok", "/bin/sh", "-c", "touch /tmp/x && touch $HOME/file && echo ok")
			check("hosts", "box-host", "/bin/sh", "-c", "grep -o box-host /etc/hosts")
			// Only a loopback.
			check("interfaces", "lo", "/bin/sh", "-c", "ls /sys/class/net 2>/dev/null || ip -o link | cut -d: -f2")
			// What needs CAP_SYS_ADMIN fails.
			fails("mount", "mount", "-t", "tmpfs", "none", "/tmp")
			fails("unshare", "unshare", "-n", "true")
			fails("sethostname", "hostname", "evil")
			// The repl's files belong to its own unprivileged uid range on the host (with runsc:
			// the range the sandbox's user namespace maps).
			fi, err := os.Stat(home + "/repl/file")
			require.NoError(t, err)
			if uid := fi.Sys().(*syscall.Stat_t).Uid; uid < 1<<28 {
				t.Errorf("a file the repl made is owned by host uid %d, want one of the containers' ranges", uid)
			}
			if rt.name == "runc" {
				// Seccomp: personality(ADDR_NO_RANDOMIZE) passes the capabilities but not
				// Docker's profile. (gVisor applies the profile inside the sandbox with
				// --oci-seccomp, and implements no personality but the default.)
				check("personality allowed", "ok", "/bin/sh", "-c", "linux64 true && echo ok")
				fails("personality(ADDR_NO_RANDOMIZE)", "linux64", "-R", "true")
				check("Seccomp", "2", "/bin/sh", "-c", "grep Seccomp: /proc/self/status | cut -f2")
				check("NoNewPrivs", "1", "/bin/sh", "-c", "grep NoNewPrivs /proc/self/status | cut -f2")
				check("masked /proc/timer_list", "0", "/bin/sh", "-c", "wc -c < /proc/timer_list")
				// Each container has a user-namespace range of its own; home belongs to it.
				m1, _ := exec1(t, r, "box1", "cat", "/proc/self/uid_map")
				m2, _ := exec1(t, r, "box2", "cat", "/proc/self/uid_map")
				f1, f2 := strings.Fields(m1), strings.Fields(m2)
				if len(f1) != 3 || len(f2) != 3 || f1[0] != "0" || f1[1] == "0" || f1[1] == f2[1] || f1[2] != "65536" {
					t.Errorf("uid maps %q and %q: want root mapped to distinct unprivileged ranges", m1, m2)
				}
				fi, err := os.Stat(home + "/repl/file")
				require.NoError(t, err)
				if uid := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid); uid != f1[1] {
					t.Errorf("a file the repl made is owned by host uid %s, want %s", uid, f1[1])
				}
			}
		})
	}
}

// TestVMBinary runs a dynamically linked program of the VM (this test binary) in a container:
// bound in read-only, its libraries added to the image.
func TestVMBinary(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox not installed")
	}
	root := filepath.Join(t.TempDir(), "rootfs")
	require.NoError(t, oci.BusyboxRootfs(root, bb))
	require.NoError(t, oci.AddLibraries(root, exe))
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			r := newRuntime(t, rt.name, rt.args, "")
			t.Cleanup(func() { r.Close() })
			startT(t, r, "vmbin", conman.Spec{Rootfs: root, Mounts: []conman.Mount{{Source: exe, Target: "/opt/app/test", ReadOnly: true}}})
			out, code := exec1(t, r, "vmbin", "/opt/app/test", "-test.run=^TestNothing$")
			if code != 0 || !strings.Contains(out, "PASS") {
				t.Fatalf("the VM's binary in the container: %d %q", code, out)
			}
		})
	}
}

// TestIsolation runs conmantest's isolation suite: a hostile program in a container attacks
// the VM, a neighbour and the platform.
func TestIsolation(t *testing.T) {
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			var hostUIDs func(conman.Runtime, string) ([]int, error)
			if rt.name == "runsc" {
				// gVisor's sentry shows an identity uid_map of its own root user namespace: the
				// suite checks the uids of the sandbox's host processes instead.
				hostUIDs = func(_ conman.Runtime, id string) ([]int, error) {
					return cgroupUIDs("switchyard-test-oci/" + rt.name + "/" + id)
				}
			}
			conmantest.RunIsolation(t, conmantest.Options{
				HostUIDs: hostUIDs,
				New: func(t *testing.T) conman.Runtime {
					r := newRuntime(t, rt.name, rt.args, "")
					t.Cleanup(func() {
						if t.Failed() {
							dumpLogs(t, r)
						}
					})
					return r
				},
			})
		})
	}
}

// cgroupUIDs returns the uids (real, effective, saved, file-system) of every process in the v1
// pids cgroup (or v2 cgroup) cg and below it.
func cgroupUIDs(cg string) ([]int, error) {
	root := "/sys/fs/cgroup/pids"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		root = "/sys/fs/cgroup"
	}
	var uids []int
	err := filepath.WalkDir(filepath.Join(root, cg), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, pid := range strings.Fields(string(b)) {
			st, err := os.ReadFile("/proc/" + pid + "/status")
			if err != nil {
				continue // exited
			}
			for _, line := range strings.Split(string(st), "\n") {
				if f := strings.Fields(line); len(f) == 5 && f[0] == "Uid:" {
					for _, u := range f[1:] {
						n, err := strconv.Atoi(u)
						if err != nil {
							return err
						}
						uids = append(uids, n)
					}
				}
			}
		}
		return nil
	})
	return uids, err
}

// TestOldGVisorRefused: a runsc from before google/gvisor#12692 (Debian 12's, 20221219) is
// refused with a clear error rather than run without seccomp on exec'd processes.
func TestOldGVisorRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const debian = "/usr/bin/runsc" // apt-get install runsc
	out, err := exec.Command(debian, "--version").Output()
	if err != nil || !strings.Contains(string(out), "2022") {
		t.Skip("no Debian 12 runsc at " + debian)
	}
	_, err = oci.New(oci.Config{Binary: debian, StateDir: t.TempDir(), CgroupParent: "switchyard-test-oci/old-runsc"})
	require.ErrorIs(t, err, conman.ErrInvalid)
	require.ErrorContains(t, err, "gVisor from 20221219")
}
