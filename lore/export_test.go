package lore

// SetCompactThreshold makes the store rebuild its repl arena as soon as garbage bytes reach n
// and outgrow the live records, so tests can exercise compaction with a few repls.
func SetCompactThreshold(s *MemStore, n int) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.repls.minCompact = n
}

// SetHashMask ANDs mask into every index hash of an empty store: with 0 every ID and every name
// collides, so every repl after the first goes through the overflow maps.
func SetHashMask(s *MemStore, mask uint64) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.repls.len() != 0 {
		panic("SetHashMask on a store with repls")
	}
	s.repls.mask = mask
}

// ArenaStats reports the repl arena's live and garbage bytes and how often it was rebuilt.
func ArenaStats(s *MemStore) (live, garbage, compactions int) {
	s.rmu.RLock()
	defer s.rmu.RUnlock()
	return s.repls.live, s.repls.garbage, s.repls.compactions
}
