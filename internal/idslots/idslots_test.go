package idslots

import (
	"os"
	"path/filepath"
	"testing"
)

// TestAllocator: two runtimes sharing a slot directory never get the same slot; a container
// keeps its slot; Release frees only what is its own; Reclaim drops the slots of containers
// and runtimes that are gone.
func TestAllocator(t *testing.T) {
	dir := t.TempDir()
	owner1, owner2 := t.TempDir(), t.TempDir()
	a := &Allocator{Dir: filepath.Join(dir, "slots"), Owner: owner1, Base: 1 << 28, Slots: 4}
	b := &Allocator{Dir: a.Dir, Owner: owner2, Base: 1 << 28, Slots: 4}
	seen := map[int]string{}
	for _, c := range []struct {
		al *Allocator
		id string
	}{{a, "x"}, {a, "y"}, {b, "x"}, {b, "y"}} {
		s, err := c.al.Acquire(c.id, -1)
		if err != nil {
			t.Fatal(err)
		}
		if prev, ok := seen[s]; ok {
			t.Fatalf("slot %d given to %s and %s/%s", s, prev, c.al.Owner, c.id)
		}
		seen[s] = c.al.Owner + "/" + c.id
	}
	if _, err := a.Acquire("z", -1); err == nil {
		t.Fatal("a fifth container got one of four slots")
	}
	// Sticky: asking again for the same container gives the same slot.
	s1, _ := a.Acquire("x", -1)
	s2, _ := a.Acquire("x", -1)
	if s1 != s2 {
		t.Fatalf("container x moved from slot %d to %d", s1, s2)
	}
	// Release of another's slot does nothing; of its own frees it.
	b.Release(s1, "x")
	if _, err := os.Stat(a.path(s1)); err != nil {
		t.Fatal("b released a's slot")
	}
	a.Release(s1, "x")
	if _, err := os.Stat(a.path(s1)); !os.IsNotExist(err) {
		t.Fatal("a's slot was not released")
	}
	a.Release(-1, "x") // no slot: nothing to do
	// Reclaim: a's "y" is gone; b's runtime directory is gone.
	if err := os.RemoveAll(owner2); err != nil {
		t.Fatal(err)
	}
	a.Reclaim(func(id string) bool { return false })
	ents, err := os.ReadDir(a.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Fatalf("%d slots left after reclaim", len(ents))
	}
}
