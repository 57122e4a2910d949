package process

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/conman"
)

// The file-system layer of the sandbox, run by the init inside its new user and mount
// namespaces before anything of the repl runs (modelled on bubblewrap's setup_newroot and runc's
// rootfs_linux.go): a tmpfs becomes the new root; the system directories are bound into it
// read-only, nosuid and nodev; /etc is generated (a few harmless files of the VM's are bound
// read-only); /dev holds only the safe devices, bound from the VM (a user namespace cannot
// mknod), a devpts instance of its own and a private /dev/shm; /proc is the container's own,
// with runc's masked and read-only paths; /sys is read-only; /tmp is a private tmpfs; the repl's
// directory is the only writable VM path. pivot_root then detaches the VM's tree entirely, and the
// root itself is made read-only.

// systemDirs are bound from the VM's root when Spec.Rootfs is empty (symlinks, as in a merged
// /usr, are recreated).
var systemDirs = []string{"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// etcFromVM are the VM's /etc entries a shell needs and that hold nothing secret.
var etcFromVM = []string{
	"alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "terminfo",
	"bash.bashrc", "profile", "profile.d", "inputrc", "shells", "services", "protocols",
	"mime.types", "ssl", "ca-certificates", "ca-certificates.conf", "environment", "mtab",
}

// devices are bound from the VM's /dev (read-write, but nodev is not set on them).
var devices = []string{"null", "zero", "full", "random", "urandom", "tty"}

// maskedPaths are hidden behind /dev/null (files) or an empty read-only tmpfs (directories), as
// runc does; readonlyPaths are bound onto themselves read-only.
var (
	maskedPaths = []string{
		"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
		"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
		"/proc/interrupts", "/sys/firmware", "/sys/devices/virtual/powercap", "/sys/kernel/debug",
	}
	readonlyPaths = []string{
		"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
	}
)

const (
	roFlags   = unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV
	mountBind = unix.MS_BIND | unix.MS_REC
)

// setAttr sets mount attributes on the mount at path and, with recursive, every mount below.
func setAttr(path string, attr uint64, recursive bool) error {
	flags := uint(unix.AT_SYMLINK_NOFOLLOW)
	if recursive {
		flags |= unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(unix.AT_FDCWD, path, flags, &unix.MountAttr{Attr_set: attr}); err != nil {
		return fmt.Errorf("mount_setattr %s: %w", path, err)
	}
	return nil
}

// source is what a bind mount mounts: a detached mount on a descriptor (tree), or a path of the
// init's own mount namespace.
type source struct {
	tree int
	path string
}

func pathSource(p string) source { return source{tree: -1, path: p} }

func (s source) String() string {
	if s.tree >= 0 {
		return fmt.Sprintf("detached mount %d", s.tree)
	}
	return s.path
}

func (s source) stat() (os.FileInfo, error) {
	if s.tree >= 0 {
		var st unix.Stat_t
		if err := unix.Fstat(s.tree, &st); err != nil {
			return nil, err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return dirInfo{}, nil
		}
		return fileInfo{}, nil
	}
	return os.Stat(s.path)
}

type dirInfo struct{ os.FileInfo }

func (dirInfo) IsDir() bool { return true }

type fileInfo struct{ os.FileInfo }

func (fileInfo) IsDir() bool { return false }

// bindInto mounts src at root+target with attr.
func bindInto(root string, src source, target string, attr uint64) error {
	fi, err := src.stat()
	if err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	dst := filepath.Join(root, target)
	if fi.IsDir() {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return fmt.Errorf("bind %s: mountpoint: %w", target, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("bind %s: mountpoint: %w", target, err)
		}
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("bind %s: mountpoint: %w", target, err)
		}
		f.Close()
	}
	if src.tree >= 0 {
		err = unix.MoveMount(src.tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH)
	} else {
		err = unix.Mount(src.path, dst, "", mountBind, "")
	}
	if err != nil {
		return fmt.Errorf("bind %s at %s: %w", src, target, err)
	}
	if attr != 0 {
		return setAttr(dst, attr, true)
	}
	return nil
}

// copyLink recreates the symlink src at root+target.
func copyLink(root, src, target string) error {
	dest, err := os.Readlink(src)
	if err != nil {
		return err
	}
	dst := filepath.Join(root, target)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.Symlink(dest, dst)
}

// bindOrLink binds a VM path or, for a symlink, recreates it; missing paths are skipped.
func bindOrLink(root, src, target string, attr uint64) error {
	fi, err := os.Lstat(src)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return copyLink(root, src, target)
	}
	return bindInto(root, pathSource(src), target, attr)
}

// newRootMount is where the init mounts the container's root in its own mount namespace
// before pivot_root: a directory that exists on every Linux system and that any uid may
// search. What it hides of the VM is never needed afterwards (the sources are open already).
const newRootMount = "/tmp"

// sources opens what the sandbox binds from the VM, before anything is mounted over it: the
// runtime's detached mounts, or (unprivileged runtime) the paths themselves.
func sources(cfg initConfig) (dir, rootfs source, mounts []source, err error) {
	open := func(fd int, path string) (source, error) {
		if fd > 0 {
			return source{tree: fd}, nil
		}
		f, err := unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return source{}, fmt.Errorf("open %s: %w", path, err)
		}
		return pathSource("/proc/self/fd/" + strconv.Itoa(f)), nil
	}
	if dir, err = open(cfg.DirFD, cfg.Dir); err != nil {
		return
	}
	rootfs = source{tree: -1}
	if cfg.Rootfs != "" {
		if rootfs, err = open(cfg.RootfsFD, cfg.Rootfs); err != nil {
			return
		}
	}
	for i, m := range cfg.Mounts {
		fd := 0
		if i < len(cfg.MountFDs) {
			fd = cfg.MountFDs[i]
		}
		s, err := open(fd, m.Source)
		if err != nil {
			return dir, rootfs, nil, err
		}
		mounts = append(mounts, s)
	}
	return
}

// buildRoot builds the container's root and pivots into it. It works relative to its working
// directory, the new root.
func buildRoot(cfg initConfig) error {
	const root = "."
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	dirSrc, rootfsSrc, mountSrcs, err := sources(cfg)
	if err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", newRootMount, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=4m,nr_inodes=4096"); err != nil {
		return fmt.Errorf("root tmpfs: %w", err)
	}
	if err := unix.Chdir(newRootMount); err != nil {
		return fmt.Errorf("enter the root tmpfs: %w", err)
	}
	if cfg.Rootfs == "" {
		for _, d := range systemDirs {
			if err := bindOrLink(root, "/"+d, d, roFlags); err != nil {
				return err
			}
		}
		if err := writeEtc(root, cfg); err != nil {
			return err
		}
	} else {
		// Stage the image root, bind its entries, then drop the stage.
		const stage = ".rootfs"
		if err := bindInto(root, rootfsSrc, stage, 0); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		entries, err := os.ReadDir(stage)
		if err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		for _, e := range entries {
			switch e.Name() {
			case "proc", "sys", "dev", "tmp":
				continue
			}
			if err := bindOrLink(root, filepath.Join(stage, e.Name()), e.Name(), roFlags); err != nil {
				return err
			}
		}
		if err := unix.Unmount(stage, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
		if err := os.Remove(stage); err != nil {
			return fmt.Errorf("rootfs: %w", err)
		}
	}
	if err := setupDev(root, cfg.SingleID); err != nil {
		return err
	}
	tmpSize := cfg.TmpBytes
	if tmpSize <= 0 {
		tmpSize = 512 << 20
	}
	if err := os.MkdirAll(filepath.Join(root, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", filepath.Join(root, "tmp"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV,
		"mode=1777,size="+strconv.FormatInt(tmpSize, 10)); err != nil {
		return fmt.Errorf("mount /tmp: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "proc"), 0o555); err != nil {
		return err
	}
	if err := unix.Mount("proc", filepath.Join(root, "proc"), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(root, "sys"), 0o555); err != nil {
		return err
	}
	if err := unix.Mount("sysfs", filepath.Join(root, "sys"), "sysfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount /sys: %w", err)
	}
	if err := maskPaths(root); err != nil {
		return err
	}
	// The repl's own directory, at the same path as on the VM, is the one writable VM path.
	if err := bindInto(root, dirSrc, cfg.Dir, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV); err != nil {
		return fmt.Errorf("repl directory: %w", err)
	}
	for i, m := range cfg.Mounts {
		attr := uint64(unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV)
		if m.ReadOnly {
			attr |= unix.MOUNT_ATTR_RDONLY
		}
		if err := bindInto(root, mountSrcs[i], m.Target, attr); err != nil {
			return fmt.Errorf("mount %s: %w", m.Source, err)
		}
	}
	// pivot_root(".", "."), then detach the old root stacked on top (runc's way: no directory for
	// the old root is ever visible).
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the VM's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if err := setAttr("/", unix.MOUNT_ATTR_RDONLY|unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV, false); err != nil {
		return fmt.Errorf("read-only root: %w", err)
	}
	return nil
}

// writeEtc generates a minimal /etc: the container's users, hostname and hosts, plus the VM's
// harmless files (etcFromVM) bound read-only. Nothing else of the VM's /etc is visible.
func writeEtc(root string, cfg initConfig) error {
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return err
	}
	files := map[string]string{
		"passwd":        "root:x:0:0:root:" + cfg.Dir + ":/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"group":         "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
		"hostname":      cfg.Hostname + "\n",
		"hosts":         "127.0.0.1\tlocalhost " + cfg.Hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"resolv.conf":   "",
		"nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files\nservices: files\nprotocols: files\n",
		"os-release":    "NAME=\"switchyard sandbox\"\nID=switchyard\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("/etc/%s: %w", name, err)
		}
	}
	for _, name := range etcFromVM {
		if err := bindOrLink(root, "/etc/"+name, "etc/"+name, roFlags); err != nil {
			return err
		}
	}
	return nil
}

// setupDev builds /dev: safe devices bound from the VM, a devpts of the container's own, a
// private /dev/shm and the usual links.
func setupDev(root string, singleID bool) error {
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64"); err != nil {
		return fmt.Errorf("mount /dev: %w", err)
	}
	for _, d := range devices {
		if err := bindInto(root, pathSource("/dev/"+d), "dev/"+d, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC); err != nil {
			return err
		}
	}
	for _, d := range []string{"pts", "shm"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return err
		}
	}
	opts := "newinstance,ptmxmode=0666,mode=0620,gid=5"
	if singleID {
		opts = "newinstance,ptmxmode=0666,mode=0620" // gid 5 is not mapped
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, opts); err != nil {
		return fmt.Errorf("mount /dev/pts: %w", err)
	}
	if err := unix.Mount("tmpfs", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=1777,size=64m"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	links := map[string]string{
		"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
		"stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2", "core": "/proc/kcore",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dev, name)); err != nil {
			return err
		}
	}
	return setAttr(dev, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NOEXEC, false)
}

func maskPaths(root string) error {
	for _, p := range maskedPaths {
		path := filepath.Join(root, p)
		fi, err := os.Stat(path)
		if err != nil {
			continue // not on this kernel
		}
		if fi.IsDir() {
			err = unix.Mount("tmpfs", path, "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0")
		} else {
			err = unix.Mount(filepath.Join(root, "dev/null"), path, "", unix.MS_BIND, "")
		}
		if err != nil {
			return fmt.Errorf("mask %s: %w", p, err)
		}
	}
	for _, p := range readonlyPaths {
		path := filepath.Join(root, p)
		if _, err := os.Stat(path); err != nil {
			continue
		}
		if err := unix.Mount(path, path, "", mountBind, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", p, err)
		}
		if err := setAttr(path, roFlags|unix.MOUNT_ATTR_NOEXEC, true); err != nil {
			return err
		}
	}
	return nil
}

// validMountTarget rejects mount targets that would shadow the sandbox's own layers.
func validMountTarget(m conman.Mount) error {
	t := filepath.Clean(m.Target)
	if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Target) {
		return fmt.Errorf("%w: mount %q -> %q: paths must be absolute", conman.ErrInvalid, m.Source, m.Target)
	}
	for _, bad := range []string{"/", "/proc", "/sys", "/dev", "/etc"} {
		if t == bad || strings.HasPrefix(t, "/proc/") || strings.HasPrefix(t, "/sys/") || strings.HasPrefix(t, "/dev/") {
			return fmt.Errorf("%w: mount target %q is reserved", conman.ErrInvalid, m.Target)
		}
	}
	return nil
}
