package lore

import (
	"encoding/binary"
	"hash/maphash"
	"time"
	"unsafe"
)

// replTable holds MemStore's repls in memory the garbage collector does not scan: a directory
// of a million repls is then a few hundred pointers to the GC instead of millions, so a server
// that allocates per request (a DNS server allocates per query) does not pay for marking the
// directory on every cycle.
//
//   - Records: each repl is one packed record (creation time, five lengths, then owner, slug,
//     ID, cluster and plan) appended to a chunk of an append-only arena ([]byte chunks, growing
//     from 4 KiB to 1 MiB). Bytes once written are never changed: a lookup returns strings that
//     point into the chunk (unsafe.String), so it allocates nothing, and a string handed out
//     stays valid for as long as it is referenced. A move writes a new record; a delete leaves
//     its record as garbage; when garbage outgrows the live records (and minCompact), the live
//     records are copied into new chunks and the old ones are left to the GC.
//   - Slots: a record is named by a slot number; slots maps it to the record's chunk and
//     offset, so rebuilding the arena rewrites slots and nothing else.
//   - Indexes: byID and byName map a 64-bit hash (hash/maphash, per-store random seed) of the ID
//     and of (owner, slug) to a slot; neither key nor value holds a pointer. A lookup compares
//     the record's real bytes; a record whose hash is taken by another record goes to a small
//     overflow map keyed by the strings (empty unless 64-bit hashes collide).
//   - Order: the owner-then-slug listing is a list of sorted blocks of slots (at most
//     orderBlock each), a two-level B-tree whose only pointers are one per block.
//
// replTable is not safe for concurrent use: MemStore writes it under both of its locks and reads
// it under its read lock.
type replTable struct {
	seed maphash.Seed
	mask uint64 // ANDed into every hash; all ones except in the collision tests

	chunks  [][]byte
	used    int // bytes used in the last chunk
	live    int // bytes of live records
	garbage int // bytes of dead records (deleted, or replaced by a move)

	slots []uint64 // slot → chunk<<32 | offset; freeSlot when unused
	free  []uint32

	byID     map[uint64]uint32
	byName   map[uint64]uint32
	idOver   map[string]uint32
	nameOver map[nameKey]uint32

	order [][]uint32 // sorted blocks of slots, by (owner, slug)

	minCompact  int // garbage bytes below which the arena is never rebuilt
	compactions int
}

type nameKey struct{ owner, slug string }

const (
	freeSlot      = ^uint64(0)
	recHeader     = 8 + 4 + 5*2 // seconds, nanoseconds, five lengths
	maxField      = 1<<16 - 1
	minChunk      = 4 << 10
	maxChunk      = 1 << 20
	orderBlock    = 512
	minCompactDef = 1 << 20
)

func newReplTable() *replTable {
	return &replTable{
		seed: maphash.MakeSeed(), mask: ^uint64(0),
		byID: map[uint64]uint32{}, byName: map[uint64]uint32{},
		idOver: map[string]uint32{}, nameOver: map[nameKey]uint32{},
		minCompact: minCompactDef,
	}
}

func (t *replTable) len() int { return len(t.slots) - len(t.free) }

func (t *replTable) idHash(id string) uint64 { return maphash.String(t.seed, id) & t.mask }

func (t *replTable) nameHash(owner, slug string) uint64 {
	var h maphash.Hash
	h.SetSeed(t.seed)
	h.WriteString(owner)
	h.WriteByte('/')
	h.WriteString(slug)
	return h.Sum64() & t.mask
}

// record returns the bytes of the record in slot, from its header on.
func (t *replTable) record(slot uint32) []byte {
	loc := t.slots[slot]
	return t.chunks[loc>>32][uint32(loc):]
}

// field returns field i (0 owner, 1 slug, 2 ID, 3 cluster, 4 plan) of record b as a string
// sharing b's memory.
func field(b []byte, i int) string {
	off := recHeader
	for k := 0; k < i; k++ {
		off += int(binary.LittleEndian.Uint16(b[12+2*k:]))
	}
	n := int(binary.LittleEndian.Uint16(b[12+2*i:]))
	if n == 0 {
		return ""
	}
	return unsafe.String(&b[off], n)
}

func recSize(b []byte) int {
	n := recHeader
	for k := 0; k < 5; k++ {
		n += int(binary.LittleEndian.Uint16(b[12+2*k:]))
	}
	return n
}

// repl decodes the record in slot. Its strings share the arena's memory.
func (t *replTable) repl(slot uint32) Repl {
	b := t.record(slot)
	var s [5]string
	off := recHeader
	for k := range s {
		n := int(binary.LittleEndian.Uint16(b[12+2*k:]))
		if n > 0 {
			s[k] = unsafe.String(&b[off], n)
		}
		off += n
	}
	r := Repl{Owner: s[0], Slug: s[1], ID: s[2], Cluster: s[3], Plan: s[4]}
	if nsec := binary.LittleEndian.Uint32(b[8:]); nsec != zeroNsec {
		r.Created = time.Unix(int64(binary.LittleEndian.Uint64(b)), int64(nsec)).UTC()
	}
	return r
}

// name returns the owner and slug of the record in slot.
func (t *replTable) name(slot uint32) (owner, slug string) {
	b := t.record(slot)
	return field(b, 0), field(b, 1)
}

// fits reports whether r's strings fit a record.
func fits(r Repl) bool {
	return len(r.Owner) <= maxField && len(r.Slug) <= maxField && len(r.ID) <= maxField &&
		len(r.Cluster) <= maxField && len(r.Plan) <= maxField
}

// zeroNsec is the nanoseconds field of a record whose Created is the zero time.
const zeroNsec = ^uint32(0)

// appendRecord writes r at the end of the arena and returns its location.
func (t *replTable) appendRecord(r Repl) uint64 {
	fields := [5]string{r.Owner, r.Slug, r.ID, r.Cluster, r.Plan}
	size := recHeader
	for _, f := range fields {
		size += len(f)
	}
	if len(t.chunks) == 0 || t.used+size > len(t.chunks[len(t.chunks)-1]) {
		n := minChunk
		if len(t.chunks) > 0 {
			n = min(2*len(t.chunks[len(t.chunks)-1]), maxChunk)
		}
		t.chunks = append(t.chunks, make([]byte, max(n, size)))
		t.used = 0
	}
	c := t.chunks[len(t.chunks)-1]
	b := c[t.used : t.used+size]
	sec, nsec := r.Created.Unix(), uint32(r.Created.Nanosecond())
	if r.Created.IsZero() {
		sec, nsec = 0, zeroNsec
	}
	binary.LittleEndian.PutUint64(b, uint64(sec))
	binary.LittleEndian.PutUint32(b[8:], nsec)
	off := recHeader
	for k, f := range fields {
		binary.LittleEndian.PutUint16(b[12+2*k:], uint16(len(f)))
		off += copy(b[off:], f)
	}
	loc := uint64(len(t.chunks)-1)<<32 | uint64(t.used)
	t.used += size
	t.live += size
	return loc
}

// lookupID returns the slot of the repl with the given ID.
func (t *replTable) lookupID(id string) (uint32, bool) {
	if slot, ok := t.byID[t.idHash(id)]; ok && field(t.record(slot), 2) == id {
		return slot, true
	}
	if len(t.idOver) > 0 {
		slot, ok := t.idOver[id]
		return slot, ok
	}
	return 0, false
}

// lookupName returns the slot of the repl named (owner, slug).
func (t *replTable) lookupName(owner, slug string) (uint32, bool) {
	if slot, ok := t.byName[t.nameHash(owner, slug)]; ok {
		if o, s := t.name(slot); o == owner && s == slug {
			return slot, true
		}
	}
	if len(t.nameOver) > 0 {
		slot, ok := t.nameOver[nameKey{owner, slug}]
		return slot, ok
	}
	return 0, false
}

// insert stores a new repl, whose ID and name the caller checked are free, and returns its
// slot.
func (t *replTable) insert(r Repl) uint32 {
	loc := t.appendRecord(r)
	var slot uint32
	if n := len(t.free); n > 0 {
		slot = t.free[n-1]
		t.free = t.free[:n-1]
		t.slots[slot] = loc
	} else {
		slot = uint32(len(t.slots))
		t.slots = append(t.slots, loc)
	}
	if h := t.idHash(r.ID); !has(t.byID, h) {
		t.byID[h] = slot
	} else {
		t.idOver[clone(r.ID)] = slot
	}
	if h := t.nameHash(r.Owner, r.Slug); !has(t.byName, h) {
		t.byName[h] = slot
	} else {
		t.nameOver[nameKey{clone(r.Owner), clone(r.Slug)}] = slot
	}
	t.orderInsert(slot, r.Owner, r.Slug)
	return slot
}

// replace writes a new record for the repl in slot (same ID and name) and makes the old one
// garbage.
func (t *replTable) replace(slot uint32, r Repl) {
	old := recSize(t.record(slot))
	t.slots[slot] = t.appendRecord(r)
	t.live -= old
	t.garbage += old
}

// remove deletes the repl in slot.
func (t *replTable) remove(slot uint32) {
	b := t.record(slot)
	owner, slug, id := field(b, 0), field(b, 1), field(b, 2)
	if h := t.idHash(id); owns(t.byID, h, slot) {
		delete(t.byID, h)
	} else {
		delete(t.idOver, id)
	}
	if h := t.nameHash(owner, slug); owns(t.byName, h, slot) {
		delete(t.byName, h)
	} else {
		delete(t.nameOver, nameKey{owner, slug})
	}
	t.orderRemove(slot, owner, slug)
	size := recSize(b)
	t.live -= size
	t.garbage += size
	t.slots[slot] = freeSlot
	t.free = append(t.free, slot)
}

func has(m map[uint64]uint32, h uint64) bool { _, ok := m[h]; return ok }

func owns(m map[uint64]uint32, h uint64, slot uint32) bool { s, ok := m[h]; return ok && s == slot }

// clone copies s out of the arena, for the overflow maps' keys.
func clone(s string) string { return string(append([]byte(nil), s...)) }

// needsCompact reports whether the arena is more garbage than records.
func (t *replTable) needsCompact() bool {
	return t.garbage >= t.minCompact && t.garbage > t.live
}

// compacted returns new chunks holding every live record, and the slots locating them, leaving
// t unchanged: the caller builds them without blocking readers, then installs them with
// install.
func (t *replTable) compacted() (chunks [][]byte, used int, slots []uint64) {
	left := t.live
	var c []byte
	slots = make([]uint64, len(t.slots))
	for slot, loc := range t.slots {
		if loc == freeSlot {
			slots[slot] = freeSlot
			continue
		}
		b := t.record(uint32(slot))
		size := recSize(b)
		if c == nil || len(c)+size > cap(c) {
			if c != nil {
				chunks = append(chunks, c[:cap(c)])
			}
			c = make([]byte, 0, max(min(max(left, minChunk), maxChunk), size))
		}
		slots[slot] = uint64(len(chunks))<<32 | uint64(len(c))
		c = append(c, b[:size]...)
		left -= size
	}
	if c != nil {
		chunks = append(chunks, c[:cap(c)])
	}
	return chunks, len(c), slots
}

// install puts a compacted arena in place.
func (t *replTable) install(chunks [][]byte, used int, slots []uint64) {
	t.chunks, t.used, t.slots = chunks, used, slots
	t.garbage = 0
	t.compactions++
}

// compareName orders repls by owner, then slug.
func compareName(o1, s1, o2, s2 string) int {
	if c := compareStrings(o1, o2); c != 0 {
		return c
	}
	return compareStrings(s1, s2)
}

// seek returns the position of the first repl named (owner, slug) or after it: a block index
// and an index in that block; (len(order), 0) when every repl sorts before.
func (t *replTable) seek(owner, slug string) (int, int) {
	// The first block whose last repl is not before the name.
	lo, hi := 0, len(t.order)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		blk := t.order[m]
		o, s := t.name(blk[len(blk)-1])
		if compareName(o, s, owner, slug) < 0 {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo == len(t.order) {
		return lo, 0
	}
	blk := t.order[lo]
	i, j := 0, len(blk)
	for i < j {
		m := int(uint(i+j) >> 1)
		o, s := t.name(blk[m])
		if compareName(o, s, owner, slug) < 0 {
			i = m + 1
		} else {
			j = m
		}
	}
	return lo, i
}

func (t *replTable) orderInsert(slot uint32, owner, slug string) {
	if len(t.order) == 0 {
		t.order = append(t.order, append(make([]uint32, 0, orderBlock), slot))
		return
	}
	b, i := t.seek(owner, slug)
	if b == len(t.order) { // after every repl: the end of the last block
		b--
		i = len(t.order[b])
	}
	blk := t.order[b]
	blk = append(blk, 0)
	copy(blk[i+1:], blk[i:])
	blk[i] = slot
	if len(blk) <= orderBlock {
		t.order[b] = blk
		return
	}
	// Split a full block in two halves, each with room to grow.
	half := len(blk) / 2
	left := append(make([]uint32, 0, orderBlock), blk[:half]...)
	right := append(make([]uint32, 0, orderBlock), blk[half:]...)
	t.order = append(t.order, nil)
	copy(t.order[b+2:], t.order[b+1:])
	t.order[b], t.order[b+1] = left, right
}

func (t *replTable) orderRemove(slot uint32, owner, slug string) {
	b, i := t.seek(owner, slug)
	if b == len(t.order) || t.order[b][i] != slot {
		panic("lore: repl order index out of step with the repl table")
	}
	blk := t.order[b]
	copy(blk[i:], blk[i+1:])
	blk = blk[:len(blk)-1]
	if len(blk) > 0 {
		t.order[b] = blk
		return
	}
	copy(t.order[b:], t.order[b+1:])
	t.order[len(t.order)-1] = nil
	t.order = t.order[:len(t.order)-1]
}
