// Package idslots reserves user-namespace id ranges host-wide, for the container runtimes
// (conman/process, conman/oci): container n's ids 0-65535 are a range of the VM's own. A slot is
// an exclusively created file in a directory every runtime on the host shares, naming the
// runtime's state directory and the container, so containers of several runtimes (and VMs) on
// one host never share a range, and a container keeps its slot across restarts of its runtime.
package idslots

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

// Range is the number of ids (uids and gids) of each slot.
const Range = 65536

// Allocator hands out slots.
type Allocator struct {
	// Dir holds the host-wide reservations. Every runtime on a host must share it.
	Dir string
	// Owner is the reserving runtime's state directory.
	Owner string
	// Base is the first VM id of slot 0; slot n starts at Base + n×Range.
	Base uint32
	// Slots is the number of ranges.
	Slots int
}

func (a *Allocator) path(slot int) string {
	return filepath.Join(a.Dir, strconv.Itoa(slot))
}

func (a *Allocator) record(id string) string { return a.Owner + "\n" + id + "\n" }

// Acquire reserves a slot for container id: prefer (if ≥ 0, e.g. the one it had), then the
// slot its name hashes to, then the next free one.
func (a *Allocator) Acquire(id string, prefer int) (int, error) {
	if err := os.MkdirAll(a.Dir, 0o700); err != nil {
		return 0, fmt.Errorf("uid slots: %w", err)
	}
	rec := a.record(id)
	h := fnv.New32a()
	h.Write([]byte(rec))
	start := int(h.Sum32() % uint32(a.Slots))
	if prefer >= 0 && prefer < a.Slots {
		start = prefer
	}
	for i := 0; i < a.Slots; i++ {
		slot := (start + i) % a.Slots
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
	return 0, fmt.Errorf("uid slots: all %d slots in %s are taken", a.Slots, a.Dir)
}

// Release frees id's slot, if it still holds it.
func (a *Allocator) Release(slot int, id string) {
	if slot < 0 {
		return
	}
	if b, err := os.ReadFile(a.path(slot)); err == nil && string(b) == a.record(id) {
		_ = os.Remove(a.path(slot))
	}
}

// Reclaim frees the slots of this runtime's containers that no longer exist (keep says which
// do) and those of runtimes whose state directory is gone.
func (a *Allocator) Reclaim(keep func(id string) bool) {
	entries, err := os.ReadDir(a.Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(a.Dir, e.Name()))
		if err != nil {
			continue
		}
		owner, id, _ := strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
		stale := false
		if owner == a.Owner {
			stale = !keep(id)
		} else if _, err := os.Stat(owner); errors.Is(err, fs.ErrNotExist) {
			stale = true
		}
		if stale {
			_ = os.Remove(filepath.Join(a.Dir, e.Name()))
		}
	}
}
