//go:build linux

// Command hostile is the program the isolation suite (conmantest.RunIsolation) runs inside a
// container: a repl owner's attack on the VM, its other repls and the platform. It tries every
// way out it knows and prints one JSON line per attempt, {"attack", "blocked", "detail"}, then
// {"attack":"done"}. It only ever writes values that are already there (sysctls) or harmless
// ones, so a runtime that fails the suite is not damaged by it.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	secret          = flag.String("secret", "", "a value the host holds that must not be readable")
	secretFile      = flag.String("secret-file", "", "a world-readable host file holding -secret")
	writeDir        = flag.String("write-dir", "", "a world-writable host directory")
	neighbour       = flag.String("neighbour", "", "another container's directory")
	neighbourSecret = flag.String("neighbour-secret", "", "what its secret.txt holds")
	tcpAddrs        = flag.String("tcp", "", "comma-separated host addresses that must be unreachable")
	markerRev       = flag.String("marker-reversed", "", "a string in the argv of a host process, reversed (so our own argv does not hold it)")
	marker          = new(string)
)

type result struct {
	Attack  string `json:"attack"`
	Blocked bool   `json:"blocked"`
	Detail  string `json:"detail,omitempty"`
}

func report(attack string, blocked bool, format string, args ...any) {
	b, _ := json.Marshal(result{Attack: attack, Blocked: blocked, Detail: fmt.Sprintf(format, args...)})
	fmt.Println(string(b))
}

// try reports an attempt that is blocked when err is not nil.
func try(attack string, err error, what string) {
	if err != nil {
		report(attack, true, "%s: %v", what, err)
	} else {
		report(attack, false, "%s succeeded", what)
	}
}

func main() {
	if os.Getenv("HOSTILE_NOOP") != "" {
		return
	}
	flag.Parse()
	r := []rune(*markerRev)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	*marker = string(r)
	attacks := []func(){
		rootOnHost, readHostFile, writeHostDir, readNeighbour, envSecret, hostProcesses,
		controlSockets, tcpHost, rawSocket, packetSocket, mknodDevices, openDevices,
		procSysWrite, sysWrite, ptraceInit, procInit, keyrings, moduleLoad, bpfLoad,
		perfEvents, userNamespace, unshareUnmountProc, mountTmpfs, cgroupEscape, setnsInit,
		kernelLog, chrootEscape,
	}
	for _, a := range attacks {
		a()
	}
	report("done", true, "")
}

func rootOnHost() {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		report("root-on-host", true, "no uid_map: %v", err)
		return
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "0" && f[1] == "0" {
			report("root-on-host", false, "uid 0 here is uid 0 on the host: %q", line)
			return
		}
	}
	report("root-on-host", true, "uid_map %q", strings.TrimSpace(string(b)))
}

// pidDirs lists the /proc/<pid> directories this process can see.
func pidDirs() []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			out = append(out, "/proc/"+e.Name())
		}
	}
	return out
}

func containsFile(path, want string) bool {
	if want == "" {
		return false
	}
	b, err := os.ReadFile(path)
	return err == nil && bytes.Contains(b, []byte(want))
}

func readHostFile() {
	paths := []string{*secretFile}
	for _, p := range pidDirs() {
		paths = append(paths, p+"/root"+*secretFile, p+"/cwd/../../../../.."+*secretFile)
	}
	for _, p := range paths {
		if containsFile(p, *secret) {
			report("read-host-file", false, "read the host's secret at %s", p)
			return
		}
	}
	report("read-host-file", true, "%d paths tried", len(paths))
}

func writeHostDir() {
	p := filepath.Join(*writeDir, "pwned-by-repl")
	err := os.WriteFile(p, []byte("pwned"), 0o644)
	try("write-host-dir", err, "create "+p)
}

func readNeighbour() {
	paths := []string{filepath.Join(*neighbour, "secret.txt")}
	for _, p := range pidDirs() {
		paths = append(paths, p+"/root"+filepath.Join(*neighbour, "secret.txt"))
	}
	for _, p := range paths {
		if containsFile(p, *neighbourSecret) {
			report("read-neighbour", false, "read another repl's file at %s", p)
			return
		}
	}
	report("read-neighbour", true, "%d paths tried", len(paths))
}

func envSecret() {
	for _, p := range append([]string{"/proc/self/environ"}, pidDirs()...) {
		if !strings.HasSuffix(p, "environ") {
			p += "/environ"
		}
		if containsFile(p, *secret) {
			report("env-secret", false, "the host's secret is in %s", p)
			return
		}
	}
	report("env-secret", true, "no environment holds the host's secret")
}

func hostProcesses() {
	for _, p := range pidDirs() {
		if containsFile(p+"/cmdline", *marker) {
			report("host-processes", false, "sees a host process: %s", p)
			return
		}
	}
	report("host-processes", true, "%d processes visible, none of the host's", len(pidDirs()))
}

// controlSockets connects to every unix socket on the file system it can find.
func controlSockets() {
	deadline := time.Now().Add(5 * time.Second)
	n, found := 0, 0
	var reached []string
	_ = filepath.WalkDir("/", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if n++; n > 200000 || time.Now().After(deadline) {
			return filepath.SkipAll
		}
		if d.IsDir() && (path == "/proc" || path == "/sys") {
			return filepath.SkipDir
		}
		if d.Type()&fs.ModeSocket == 0 {
			return nil
		}
		found++
		for _, network := range []string{"unixpacket", "unix"} {
			if c, err := net.DialTimeout(network, path, 200*time.Millisecond); err == nil {
				// The init's socket answers only its runtime: a connection that is then refused
				// without a word is no breach. One that answers an exec request is.
				if network == "unixpacket" && answersExec(c) {
					reached = append(reached, path+" (ran a command)")
				} else if network == "unix" {
					reached = append(reached, path)
				}
				c.Close()
				break
			}
		}
		return nil
	})
	if len(reached) > 0 {
		report("control-sockets", false, "reached %v", reached)
		return
	}
	report("control-sockets", true, "%d sockets found, none reachable", found)
}

func answersExec(c net.Conn) bool {
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte(`{"args":["/bin/true"]}`)); err != nil {
		return false
	}
	b := make([]byte, 4096)
	n, err := c.Read(b)
	return err == nil && n > 0 && !bytes.Contains(b[:n], []byte(`"error"`))
}

func tcpHost() {
	for _, a := range strings.Split(*tcpAddrs, ",") {
		if a == "" {
			continue
		}
		if c, err := net.DialTimeout("tcp", a, time.Second); err == nil {
			c.Close()
			report("tcp-host", false, "connected to the host's %s", a)
			return
		}
	}
	report("tcp-host", true, "host addresses %s unreachable", *tcpAddrs)
}

func rawSocket() {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_TCP)
	if err == nil {
		unix.Close(fd)
	}
	try("raw-socket", err, "socket(AF_INET, SOCK_RAW)")
}

func packetSocket() {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err == nil {
		unix.Close(fd)
	}
	try("packet-socket", err, "socket(AF_PACKET, SOCK_RAW)")
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func mknodDevices() {
	dir, _ := os.MkdirTemp("", "dev")
	defer os.RemoveAll(dir)
	err := unix.Mknod(filepath.Join(dir, "sda"), unix.S_IFBLK|0o600, int(unix.Mkdev(8, 0)))
	try("mknod-block", err, "mknod a block device")
	err = unix.Mknod(filepath.Join(dir, "mem"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 1)))
	if err == nil {
		f, oerr := os.Open(filepath.Join(dir, "mem"))
		if oerr == nil {
			f.Close()
		}
		err = oerr
	}
	try("mknod-mem", err, "mknod and open /dev/mem")
}

func openDevices() {
	var opened []string
	for _, d := range []string{"/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/sda", "/dev/vda", "/dev/nvme0n1", "/dev/console", "/dev/tty1"} {
		if f, err := os.OpenFile(d, os.O_RDONLY, 0); err == nil {
			opened = append(opened, d)
			f.Close()
		}
	}
	if len(opened) > 0 {
		report("open-devices", false, "opened %v", opened)
		return
	}
	report("open-devices", true, "no host device opens")
}

// writeBack writes a file's own content back: harmless if it works, a breach all the same.
func writeBack(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0)
}

func procSysWrite() {
	for _, p := range []string{"/proc/sys/kernel/core_pattern", "/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/modprobe"} {
		if err := writeBack(p); err == nil {
			report("proc-sys-write", false, "wrote %s", p)
			return
		}
	}
	err := os.WriteFile("/proc/sysrq-trigger", []byte("h"), 0)
	try("proc-sys-write", err, "write /proc/sys and /proc/sysrq-trigger")
}

func sysWrite() {
	for _, p := range []string{"/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/uevent_helper", "/sys/power/state"} {
		if err := writeBack(p); err == nil {
			report("sys-write", false, "wrote %s", p)
			return
		}
	}
	report("sys-write", true, "/sys is read-only")
}

func ptraceInit() {
	var errs []error
	for _, pid := range []int{1, os.Getppid()} {
		err := unix.PtraceAttach(pid)
		if err == nil {
			_ = unix.PtraceDetach(pid)
			report("ptrace", false, "attached to pid %d", pid)
			return
		}
		errs = append(errs, fmt.Errorf("pid %d: %w", pid, err))
	}
	report("ptrace", true, "%v", errors.Join(errs...))
}

// procInit: the init's executable, descriptors and root (CVE-2019-5736 style).
func procInit() {
	if f, err := os.OpenFile("/proc/1/exe", os.O_WRONLY, 0); err == nil {
		f.Close()
		report("proc-init", false, "opened the init's executable for writing")
		return
	}
	// Listing the init's descriptor numbers is allowed (the directory belongs to the
	// namespace's root); following them must not be.
	ents, _ := os.ReadDir("/proc/1/fd")
	for _, e := range ents {
		p := "/proc/1/fd/" + e.Name()
		if target, err := os.Readlink(p); err == nil {
			report("proc-init", false, "read the init's descriptor %s -> %s", e.Name(), target)
			return
		}
		if f, err := os.Open(p); err == nil {
			f.Close()
			report("proc-init", false, "opened the init's descriptor %s", e.Name())
			return
		}
	}
	for _, f := range []string{"/proc/1/environ", "/proc/1/mem", "/proc/1/root/.", "/proc/1/cwd/."} {
		if _, err := os.ReadFile(f); err == nil || errors.Is(err, syscall.EISDIR) {
			report("proc-init", false, "read %s", f)
			return
		}
	}
	if _, err := os.ReadDir("/proc/1/map_files"); err == nil {
		report("proc-init", false, "read the init's map_files")
		return
	}
	report("proc-init", true, "the init's /proc entries are closed")
}

func keyrings() {
	_, err := unix.AddKey("user", "switchyard-attack", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
	if err == nil {
		report("keyring", false, "add_key worked")
		return
	}
	_, kerr := unix.KeyctlJoinSessionKeyring("switchyard-attack")
	try("keyring", kerr, "add_key ("+err.Error()+") and keyctl join")
}

func moduleLoad() {
	err := unix.InitModule([]byte{0}, "")
	if err == nil || errors.Is(err, unix.ENOEXEC) || errors.Is(err, unix.EINVAL) {
		report("module-load", false, "init_module reached the module loader: %v", err)
		return
	}
	_, _, e := unix.Syscall(unix.SYS_FINIT_MODULE, ^uintptr(0), 0, 0)
	if e == 0 || e == unix.EBADF {
		report("module-load", false, "finit_module reached the loader: %v", e)
		return
	}
	report("module-load", true, "init_module: %v; finit_module: %v", err, e)
}

func bpfLoad() {
	// BPF_MAP_CREATE with an empty attribute: anything but EPERM means the syscall is open.
	attr := make([]byte, 128)
	_, _, e := unix.Syscall(unix.SYS_BPF, 0, uintptr(unsafe.Pointer(&attr[0])), uintptr(len(attr)))
	if e == unix.EPERM || e == unix.ENOSYS {
		report("bpf", true, "bpf: %v", e)
		return
	}
	report("bpf", false, "bpf answered %v", e)
}

func perfEvents() {
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_SOFTWARE, Config: unix.PERF_COUNT_SW_CPU_CLOCK, Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{}))}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, 0)
	if err == nil {
		unix.Close(fd)
	}
	try("perf", err, "perf_event_open on every process of CPU 0")
}

// userNamespace starts a child in a new user namespace (unshare -U): the first step of most
// kernel exploits from inside a container.
func userNamespace() {
	exe, err := os.Executable()
	if err == nil {
		cmd := exec.Command(exe)
		cmd.Env = []string{"HOSTILE_NOOP=1"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS}
		err = cmd.Run()
	}
	try("user-namespace", err, "a child in new user and mount namespaces")
}

// forked runs fn in a child (a fresh thread would do, but unshare on a multithreaded Go
// process fails for CLONE_NEWUSER anyway): clone via fork-exec of ourselves is heavy, so use
// a locked thread and report what the kernel says.
func forked(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		lockThread()
		errc <- fn()
		// The thread stays locked and ends with this goroutine: its namespaces die with it.
	}()
	return <-errc
}

func unshareUnmountProc() {
	err := forked(func() error {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("unshare(CLONE_NEWNS): %w", err)
		}
		if err := unix.Unmount("/proc", unix.MNT_DETACH); err != nil {
			return fmt.Errorf("umount /proc: %w", err)
		}
		for _, p := range pidDirs() {
			if containsFile(p+"/cmdline", *marker) {
				return nil
			}
		}
		return errors.New("unmounted /proc but saw no host process")
	})
	try("unshare-umount-proc", err, "unshare -m; umount -l /proc; look for the host's processes")
}

func mountTmpfs() {
	dir, _ := os.MkdirTemp("", "mnt")
	defer os.Remove(dir)
	err := unix.Mount("tmpfs", dir, "tmpfs", 0, "")
	if err == nil {
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	}
	try("mount", err, "mount a tmpfs")
}

func cgroupEscape() {
	var wrote []string
	pid := []byte(strconv.Itoa(os.Getpid()))
	_ = filepath.WalkDir("/sys/fs/cgroup", func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "cgroup.procs" {
			if os.WriteFile(path, pid, 0) == nil {
				wrote = append(wrote, path)
			}
		}
		return nil
	})
	if len(wrote) > 0 {
		report("cgroup-escape", false, "moved itself into %v", wrote)
		return
	}
	dir, _ := os.MkdirTemp("", "cg")
	defer os.Remove(dir)
	for _, opts := range []struct{ fs, data string }{{"cgroup", "pids"}, {"cgroup2", ""}} {
		if err := unix.Mount(opts.fs, dir, opts.fs, 0, opts.data); err == nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
			report("cgroup-escape", false, "mounted %s", opts.fs)
			return
		}
	}
	self, _ := os.ReadFile("/proc/self/cgroup")
	report("cgroup-escape", true, "no cgroup.procs writable, no cgroup mount; /proc/self/cgroup: %q", strings.TrimSpace(string(self)))
}

func setnsInit() {
	var errs []error
	for _, ns := range []string{"mnt", "net", "pid", "user"} {
		f, err := os.Open("/proc/1/ns/" + ns)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		err = forked(func() error { return unix.Setns(int(f.Fd()), 0) })
		f.Close()
		if err == nil {
			report("setns", false, "setns into the init's %s namespace", ns)
			return
		}
		errs = append(errs, fmt.Errorf("%s: %w", ns, err))
	}
	report("setns", true, "%v", errors.Join(errs...))
}

func kernelLog() {
	buf := make([]byte, 4096)
	_, err := unix.Klogctl(unix.SYSLOG_ACTION_READ_ALL, buf)
	try("kernel-log", err, "syslog(READ_ALL)")
}

// chrootEscape is the classic: chroot into a subdirectory, climb out, chroot to what is there.
// It runs last: it changes this process's root.
func chrootEscape() {
	err := forked(func() error {
		dir, err := os.MkdirTemp("", "jail")
		if err != nil {
			return err
		}
		defer os.Remove(dir) // by its path from before the chroot: gone only if the chroot failed
		if err := unix.Chroot(dir); err != nil {
			return fmt.Errorf("chroot: %w", err)
		}
		for range 64 {
			_ = unix.Chdir("..")
		}
		if err := unix.Chroot("."); err != nil {
			return fmt.Errorf("chroot .: %w", err)
		}
		if containsFile(*secretFile, *secret) {
			return nil
		}
		return errors.New("climbed to the container's own root only")
	})
	try("chroot-escape", err, "chroot, climb out, read the host's secret")
	_ = syscall.Chdir("/")
}
