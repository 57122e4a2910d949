package process

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// The user-namespace layer: every sandboxed container of a root runtime maps its uids and gids
// 0-65535 to a range of the VM's own, a different range for each container on the host
// (Config.UIDBase + slot×65536), so a process that reaches the VM owns nothing of the VM's or of
// another repl's. A slot is reserved host-wide by an exclusively created file in
// Config.SlotDir naming the runtime's state directory and the container, so runtimes of several
// VMs on one host never share a range; a container keeps its slot across restarts of its
// runtime. An unprivileged runtime maps its own uid alone (bubblewrap's way).

const idRange = 65536

type slotAllocator struct {
	dir   string // host-wide reservations
	owner string // the runtime's state directory
	base  uint32
	slots int
}

func (a *slotAllocator) path(slot int) string {
	return filepath.Join(a.dir, strconv.Itoa(slot))
}

func (a *slotAllocator) record(id string) string { return a.owner + "\n" + id + "\n" }

// acquire reserves a slot for container id: prefer (if ≥ 0, e.g. the one it had), then the
// slot its name hashes to, then the next free one.
func (a *slotAllocator) acquire(id string, prefer int) (int, error) {
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return 0, fmt.Errorf("uid slots: %w", err)
	}
	rec := a.record(id)
	h := fnv.New32a()
	h.Write([]byte(rec))
	start := int(h.Sum32() % uint32(a.slots))
	if prefer >= 0 && prefer < a.slots {
		start = prefer
	}
	for i := 0; i < a.slots; i++ {
		slot := (start + i) % a.slots
		f, err := os.OpenFile(a.path(slot), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, werr := f.WriteString(rec)
			cerr := f.Close()
			if werr != nil || cerr != nil {
				_ = os.Remove(a.path(slot))
				return 0, fmt.Errorf("uid slots: %w", errors.Join(werr, cerr))
			}
			return slot, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("uid slots: %w", err)
		}
		if b, err := os.ReadFile(a.path(slot)); err == nil && string(b) == rec {
			return slot, nil // ours already (a restart)
		}
	}
	return 0, fmt.Errorf("uid slots: all %d slots in %s are taken", a.slots, a.dir)
}

// release frees id's slot, if it still holds it.
func (a *slotAllocator) release(slot int, id string) {
	if b, err := os.ReadFile(a.path(slot)); err == nil && string(b) == a.record(id) {
		_ = os.Remove(a.path(slot))
	}
}

// reclaim frees the slots of this runtime's containers that no longer exist (keep says which
// do) and those of runtimes whose state directory is gone.
func (a *slotAllocator) reclaim(keep func(id string) bool) {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(a.dir, e.Name()))
		if err != nil {
			continue
		}
		owner, id, _ := strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
		stale := false
		if owner == a.owner {
			stale = !keep(id)
		} else if _, err := os.Stat(owner); errors.Is(err, fs.ErrNotExist) {
			stale = true
		}
		if stale {
			_ = os.Remove(filepath.Join(a.dir, e.Name()))
		}
	}
}

// shiftOwner gives the tree at dir to the id range starting at base, keeping each file's id
// within its range (uid u becomes base + u mod 65536: a file of the VM's root becomes the
// container root's, one of another range keeps its place in the range). Symlinks are not
// followed. It runs only while the container is stopped, when its range changed.
func shiftOwner(dir string, base uint32) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		uid, gid := base+st.Uid%idRange, base+st.Gid%idRange
		if st.Uid == uid && st.Gid == gid {
			return nil
		}
		return os.Lchown(path, int(uid), int(gid))
	})
}
