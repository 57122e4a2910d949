package lore

// MemdbReplByName looks a repl up in the store's go-memdb table the way a plain memdb store
// would (a read transaction and a First on the name index), bypassing the read maps: for the
// side-by-side benchmark that justifies them.
func MemdbReplByName(s *MemStore, owner, slug string) (Repl, error) {
	o, err := s.db.Txn(false).First(tableRepls, "id", owner, slug)
	if err != nil || o == nil {
		return Repl{}, ErrNotFound
	}
	return *o.(*Repl), nil
}
