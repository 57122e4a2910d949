//go:build linux

package oci

import (
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// idRange is the number of uids (and gids) of each container's user namespace.
const idRange = 65536

// slots reserves user-namespace ranges host-wide, in the same directory and format as
// conman/process: a slot is an exclusively created file in dir naming the runtime's state
// directory and the container, so containers of several runtimes (and of both packages) on one
// host never share a range, and a container keeps its slot across restarts of its runtime.
type slots struct {
	dir   string
	owner string // the runtime's state directory
	base  uint32
	n     int
}

func (a *slots) path(slot int) string    { return filepath.Join(a.dir, strconv.Itoa(slot)) }
func (a *slots) record(id string) string { return a.owner + "\n" + id + "\n" }

// acquire reserves a slot for id: prefer (if ≥ 0), then the slot its record hashes to, then
// the next free one.
func (a *slots) acquire(id string, prefer int) (int, error) {
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return 0, fmt.Errorf("oci: uid slots: %w", err)
	}
	rec := a.record(id)
	h := fnv.New32a()
	h.Write([]byte(rec))
	start := int(h.Sum32() % uint32(a.n))
	if prefer >= 0 && prefer < a.n {
		start = prefer
	}
	for i := 0; i < a.n; i++ {
		slot := (start + i) % a.n
		f, err := os.OpenFile(a.path(slot), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, werr := f.WriteString(rec)
			if cerr := f.Close(); werr != nil || cerr != nil {
				_ = os.Remove(a.path(slot))
				return 0, fmt.Errorf("oci: uid slots: %w", errors.Join(werr, cerr))
			}
			return slot, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return 0, fmt.Errorf("oci: uid slots: %w", err)
		}
		if b, err := os.ReadFile(a.path(slot)); err == nil && string(b) == rec {
			return slot, nil // ours already (a restart)
		}
	}
	return 0, fmt.Errorf("oci: uid slots: all %d slots in %s are taken", a.n, a.dir)
}

// release frees id's slot if it still holds it.
func (a *slots) release(slot int, id string) {
	if slot < 0 {
		return
	}
	if b, err := os.ReadFile(a.path(slot)); err == nil && string(b) == a.record(id) {
		_ = os.Remove(a.path(slot))
	}
}

// reclaim frees the slots of this runtime's containers that keep says are gone, and those of
// runtimes whose state directory is gone.
func (a *slots) reclaim(keep func(id string) bool) {
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
