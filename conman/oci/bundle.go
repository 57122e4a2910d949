//go:build linux

package oci

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
)

const (
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	// homeTarget is where a container without Spec.Dir gets its (state) directory.
	homeTarget = "/home/repl"
)

// validateSpec checks what the runtime would otherwise trip over late.
func validateSpec(spec *conman.Spec) error {
	if spec.Dir != "" && !filepath.IsAbs(spec.Dir) {
		return fmt.Errorf("%w: Dir %q must be absolute", conman.ErrInvalid, spec.Dir)
	}
	if spec.Rootfs != "" && !filepath.IsAbs(spec.Rootfs) {
		return fmt.Errorf("%w: Rootfs %q must be absolute", conman.ErrInvalid, spec.Rootfs)
	}
	if spec.Port < 0 || spec.Port > 65535 {
		return fmt.Errorf("%w: Port %d", conman.ErrInvalid, spec.Port)
	}
	if spec.Limits.MemoryBytes < 0 || spec.Limits.CPUMilli < 0 || spec.Limits.Pids < 0 {
		return fmt.Errorf("%w: negative limit", conman.ErrInvalid)
	}
	for _, e := range spec.Env {
		if !strings.Contains(e, "=") || strings.ContainsRune(e, 0) {
			return fmt.Errorf("%w: Env entry %q is not NAME=value", conman.ErrInvalid, e)
		}
	}
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
			return fmt.Errorf("%w: mount %q -> %q: paths must be absolute", conman.ErrInvalid, m.Source, m.Target)
		}
		t := path.Clean(m.Target)
		for _, bad := range []string{"/", "/proc", "/sys", "/dev"} {
			if t == bad || strings.HasPrefix(t, bad+"/") && bad != "/" {
				return fmt.Errorf("%w: mount target %q", conman.ErrInvalid, m.Target)
			}
		}
		if _, err := os.Stat(m.Source); err != nil {
			return fmt.Errorf("%w: mount source: %w", conman.ErrInvalid, err)
		}
	}
	return nil
}

// workDir is the container's working directory and HOME, inside the container.
func workDir(spec *conman.Spec) string {
	if spec.Dir != "" {
		return spec.Dir
	}
	return homeTarget
}

// containerEnv is the environment of every process of a container: the defaults, then
// Spec.Env.
func containerEnv(id string, spec *conman.Spec) []string {
	host := spec.Hostname
	if host == "" {
		host = id
	}
	env := []string{"PATH=" + defaultPath, "HOME=" + workDir(spec), "HOSTNAME=" + host}
	if spec.Port != 0 {
		env = append(env, "PORT="+strconv.Itoa(spec.Port))
	}
	for _, kv := range spec.Env {
		if !strings.HasPrefix(kv, "HOST=") {
			env = append(env, kv)
		}
	}
	// The web app listens on the container's own loopback, where DialContainer reaches it,
	// whatever address the caller had in mind (as conman/process does).
	return append(env, "HOST=127.0.0.1")
}

// mountMap lists the container's bind mounts (target inside, source on the host).
func (c *container) mountMap() [][2]string {
	spec := &c.p.Status.Spec
	var mm [][2]string
	if spec.Dir != "" {
		mm = append(mm, [2]string{spec.Dir, spec.Dir})
	} else {
		mm = append(mm, [2]string{homeTarget, filepath.Join(c.dir, "home")})
	}
	for _, m := range spec.Mounts {
		mm = append(mm, [2]string{path.Clean(m.Target), m.Source})
	}
	return mm
}

// rootDir is where the container's root file system is mounted on the host.
func (r *Runtime) rootDir(c *container) string { return filepath.Join(r.runDir, c.id, "rootfs") }

// prepareFS mounts the container's root file system (an overlay: the image read-only below a
// per-container layer holding the mount points), creates the mount points, and gives the
// working directory to the container's root user.
func (r *Runtime) prepareFS(c *container) error {
	root := r.rootDir(c)
	unmountAll(root)
	upper, work := filepath.Join(c.dir, "upper"), filepath.Join(c.dir, "work")
	// The upper directory's mode is the root's, as the container sees it.
	for _, d := range []string{upper, work, root} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return fmt.Errorf("oci: root file system: %w", err)
		}
	}
	if err := os.Chmod(upper, 0o755); err != nil {
		return fmt.Errorf("oci: root file system: %w", err)
	}
	if err := os.Chmod(filepath.Dir(root), 0o711); err != nil {
		return fmt.Errorf("oci: root file system: %w", err)
	}
	opts := "lowerdir=" + escapeOverlay(c.p.Rootfs) + ",upperdir=" + escapeOverlay(upper) + ",workdir=" + escapeOverlay(work)
	if err := unix.Mount("overlay", root, "overlay", unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("oci: mount root file system: %w", err)
	}
	// Mount points, made here as root on the host: with a user namespace the runtime could not
	// create them in directories of the image (owned by the host's root).
	dirs := []string{"/proc", "/dev", "/sys", "/tmp", "/etc"}
	for _, m := range c.mountMap() {
		if fi, err := os.Stat(m[1]); err != nil || fi.IsDir() {
			dirs = append(dirs, m[0])
		}
	}
	for _, d := range dirs {
		if err := mkdirIn(root, d); err != nil {
			return fmt.Errorf("oci: mount point %s: %w", d, err)
		}
	}
	for _, m := range c.p.Status.Spec.Mounts {
		if fi, err := os.Stat(m.Source); err == nil && !fi.IsDir() {
			if err := touchIn(root, m.Target); err != nil {
				return fmt.Errorf("oci: mount point %s: %w", m.Target, err)
			}
		}
	}
	// The init runs an execute-only copy of the image's /bin/sh: exec of a file the process may
	// not read makes it non-dumpable, so the repl (same uid) cannot ptrace it or follow its
	// /proc entries. gVisor's sentry loads the program itself, through its gofer, which runs
	// as the container's root: there the copy belongs to the container's root.
	owner := -1
	if r.gvisor {
		owner = int(r.uidBase(c.p.Slot))
	}
	if err := installInit(c.p.Rootfs, root, owner); err != nil {
		return err
	}
	for _, f := range []string{"/etc/hosts", "/etc/hostname"} {
		if err := touchIn(root, f); err != nil {
			return fmt.Errorf("oci: mount point %s: %w", f, err)
		}
	}
	spec := &c.p.Status.Spec
	host := spec.Hostname
	if host == "" {
		host = c.id
	}
	if err := os.WriteFile(filepath.Join(c.dir, "hosts"), []byte("127.0.0.1\tlocalhost "+host+"\n::1\tlocalhost ip6-localhost\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "hostname"), []byte(host+"\n"), 0o644); err != nil {
		return err
	}
	home := spec.Dir
	if home == "" {
		home = filepath.Join(c.dir, "home")
	}
	if err := os.MkdirAll(home, 0o755); err != nil {
		return fmt.Errorf("oci: working directory: %w", err)
	}
	if err := chownTree(home, int(r.uidBase(c.p.Slot)), idRange); err != nil {
		return fmt.Errorf("oci: working directory: %w", err)
	}
	return nil
}

// initPath is the init's shell inside the container.
const initPath = "/.switchyard/sh"

// installInit copies the image's /bin/sh to initPath below root, mode 0111 and owned by the
// host's root (no one in the container may read it), or by host uid and gid owner if not -1.
func installInit(image, root string, owner int) error {
	fi, host, ok := resolveIn(image, nil, "/bin/sh")
	if !ok || !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: the image has no /bin/sh (the container's init)", conman.ErrInvalid)
	}
	b, err := os.ReadFile(host)
	if err != nil {
		return fmt.Errorf("oci: init: %w", err)
	}
	if err := mkdirIn(root, path.Dir(initPath)); err != nil {
		return fmt.Errorf("oci: init: %w", err)
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	rel := strings.TrimPrefix(initPath, "/")
	_ = rt.Remove(rel)
	f, err := rt.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o111)
	if err != nil {
		return fmt.Errorf("oci: init: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("oci: init: %w", err)
	}
	if err := f.Chmod(0o111); err != nil {
		f.Close()
		return err
	}
	if owner >= 0 {
		if err := f.Chown(owner, owner); err != nil {
			f.Close()
			return fmt.Errorf("oci: init: %w", err)
		}
	}
	return f.Close()
}

// escapeOverlay escapes the characters overlayfs options treat specially.
func escapeOverlay(s string) string {
	return strings.NewReplacer(`\`, `\\`, `,`, `\,`, `:`, `\:`).Replace(s)
}

// mkdirIn creates dir (a path inside the container) below root, never following a symbolic
// link out of it.
func mkdirIn(root, dir string) error {
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	rel := strings.TrimPrefix(path.Clean("/"+dir), "/")
	if rel == "" {
		return nil
	}
	return rt.MkdirAll(rel, 0o755)
}

// touchIn creates an empty file at name (inside the container) below root unless it exists.
func touchIn(root, name string) error {
	if err := mkdirIn(root, path.Dir(name)); err != nil {
		return err
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	f, err := rt.OpenFile(strings.TrimPrefix(path.Clean("/"+name), "/"), os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// chownTree gives dir to the container's users: every entry whose owner is outside [base,
// base+size) is moved into it, keeping its offset within a range (so files of the same
// repl's earlier range, or of the host's root, map to the same user inside). Symbolic links
// are not followed.
func chownTree(dir string, base, size int) error {
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if s := st.Sys().(*syscall.Stat_t); int(s.Uid) == base && int(s.Gid) == base {
		return nil // already the container's: the usual case, keep it cheap
	}
	move := func(id uint32) int {
		if int(id) >= base && int(id) < base+size {
			return int(id)
		}
		return base + int(id)%size
	}
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		s := fi.Sys().(*syscall.Stat_t)
		uid, gid := move(s.Uid), move(s.Gid)
		if uid == int(s.Uid) && gid == int(s.Gid) {
			return nil
		}
		return os.Lchown(p, uid, gid)
	})
}

// writeBundle writes the container's OCI bundle (config.json) to dir.
func (r *Runtime) writeBundle(c *container, dir string) error {
	spec := &c.p.Status.Spec
	host := spec.Hostname
	if host == "" {
		host = c.id
	}
	caps := slices.Clone(defaultCaps)
	s := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: r.rootDir(c), Readonly: true},
		Process: &specs.Process{
			Args:            append([]string{initPath, "-c", initScript, "conman-init"}, spec.Command...),
			Env:             containerEnv(c.id, spec),
			Cwd:             workDir(spec),
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 16384, Soft: 16384}},
		},
		Hostname: host,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777", "size=" + strconv.FormatInt(r.cfg.TmpBytes, 10)}},
			{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(c.dir, "hosts"), Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
			{Destination: "/etc/hostname", Type: "bind", Source: filepath.Join(c.dir, "hostname"), Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}},
		},
		Linux: &specs.Linux{
			CgroupsPath: "/" + r.cg.parent + "/" + c.id + "/" + "ctr",
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Seccomp:       DefaultSeccomp(),
		},
	}
	for _, m := range c.mountMap()[:1] {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m[0], Type: "bind", Source: m[1], Options: []string{"rbind", "rw", "nosuid", "nodev"}})
	}
	for _, m := range spec.Mounts {
		opts := []string{"rbind", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		s.Mounts = append(s.Mounts, specs.Mount{Destination: path.Clean(m.Target), Type: "bind", Source: m.Source, Options: opts})
	}
	if r.gvisor {
		s.Linux.Seccomp = gvisorSeccomp()
		// runsc joins our cgroup (it removes only cgroups it made), so an OOM kill of the
		// sandbox is counted where we still read it after the exit.
		s.Linux.CgroupsPath = "/" + r.cg.parent + "/" + c.id
		// The network namespace is ours (see newNetns), used through --network=host. With
		// --network=host runsc starts the sandbox (the sentry) and the gofer in the spec's user
		// namespace, or as the host's root if it names none: the container's range, as with
		// runc, so the sentry is an unprivileged host user and the gofer writes the repl's
		// files as it.
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: filepath.Join(r.runDir, c.id, "netns")},
			specs.LinuxNamespace{Type: specs.UserNamespace})
	} else {
		s.Linux.Namespaces = append(s.Linux.Namespaces,
			specs.LinuxNamespace{Type: specs.NetworkNamespace}, specs.LinuxNamespace{Type: specs.UserNamespace},
			specs.LinuxNamespace{Type: specs.CgroupNamespace})
	}
	base := r.uidBase(c.p.Slot)
	s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: idRange}}
	s.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: idRange}}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("oci: bundle: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
		return fmt.Errorf("oci: bundle: %w", err)
	}
	return nil
}

// lookPath checks that program runs in the container: found through PATH of env when it has
// no slash, and a regular executable file, resolved inside the container's file system (its
// bind mounts, then its root). It catches a missing program before the runtime reports it as
// an exit code.
func (r *Runtime) lookPath(c *container, program string, env []string, dir string) error {
	candidates := []string{program}
	if !strings.Contains(program, "/") {
		p := defaultPath
		for _, e := range env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				p = v
			}
		}
		candidates = nil
		for _, d := range filepath.SplitList(p) {
			if path.IsAbs(d) {
				candidates = append(candidates, path.Join(d, program))
			}
		}
	} else if !path.IsAbs(program) {
		if dir == "" {
			dir = workDir(&c.p.Status.Spec)
		}
		candidates = []string{path.Join(dir, program)}
	}
	for _, cand := range candidates {
		if r.executableIn(c, cand) {
			return nil
		}
	}
	return fmt.Errorf("%w: %q not found in the container", conman.ErrNotFound, program)
}

// executableIn reports whether name (a path inside the container) is an executable regular
// file, following symbolic links inside the container's file system.
func (r *Runtime) executableIn(c *container, name string) bool {
	root := c.p.Rootfs
	if st := c.p.Status.State; st == conman.Running || st == conman.Created {
		if _, err := os.Stat(r.rootDir(c)); err == nil && isMountPoint(r.rootDir(c)) {
			root = r.rootDir(c)
		}
	}
	fi, _, ok := resolveIn(root, c.mountMap(), name)
	return ok && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// resolveIn follows name (a path inside the container) through symbolic links to a file that
// is not one, resolving every link inside the container's file system (root and mounts), and
// returns that file's info and host path.
func resolveIn(root string, mounts [][2]string, name string) (fs.FileInfo, string, bool) {
	for range 40 { // symbolic link hops
		host, err := hostPath(root, mounts, name)
		if err != nil {
			return nil, "", false
		}
		fi, err := os.Lstat(host)
		if err != nil {
			// A symbolic link in a parent directory: resolve it component by component.
			resolved, ok := resolveParents(root, mounts, name)
			if !ok || resolved == name {
				return nil, "", false
			}
			name = resolved
			continue
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(host)
			if err != nil {
				return nil, "", false
			}
			if !path.IsAbs(target) {
				target = path.Join(path.Dir(name), target)
			}
			name = path.Clean(target)
			continue
		}
		return fi, host, true
	}
	return nil, "", false
}

// hostPath maps a clean path inside the container to the host, through the longest bind
// mount covering it, else below root.
func hostPath(root string, mounts [][2]string, name string) (string, error) {
	name = path.Clean("/" + name)
	best := -1
	for i, m := range mounts {
		if (name == m[0] || strings.HasPrefix(name, strings.TrimSuffix(m[0], "/")+"/")) && (best < 0 || len(m[0]) > len(mounts[best][0])) {
			best = i
		}
	}
	if best >= 0 {
		return filepath.Join(mounts[best][1], strings.TrimPrefix(name, mounts[best][0])), nil
	}
	return filepath.Join(root, name), nil
}

// resolveParents resolves the first symbolic link among name's parent directories.
func resolveParents(root string, mounts [][2]string, name string) (string, bool) {
	parts := strings.Split(strings.TrimPrefix(path.Clean(name), "/"), "/")
	cur := "/"
	for i, p := range parts[:len(parts)-1] {
		next := path.Join(cur, p)
		host, err := hostPath(root, mounts, next)
		if err != nil {
			return "", false
		}
		fi, err := os.Lstat(host)
		if err != nil {
			return "", false
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(host)
			if err != nil {
				return "", false
			}
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			return path.Join(append([]string{target}, parts[i+1:]...)...), true
		}
		cur = next
	}
	return "", false
}

// isMountPoint reports whether dir is the root of a mount (its device differs from its
// parent's).
func isMountPoint(dir string) bool {
	var a, b unix.Stat_t
	if unix.Stat(dir, &a) != nil || unix.Stat(filepath.Dir(dir), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}

// unmountAll detaches every mount stacked on dir; missing or unmounted dirs are fine.
func unmountAll(dir string) {
	for range 8 {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				return
			}
			return
		}
	}
}
