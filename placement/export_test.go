package placement

// NewMemStore gives the external tests the go-memdb store (a BatchAssigner).
func NewMemStore() Store { return newMemStore() }
