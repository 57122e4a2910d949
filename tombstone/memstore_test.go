package tombstone_test

import (
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/tombstone"
	"github.com/switchyard-dev/switchyard/tombstone/tombstonetest"
)

func TestMemStore(t *testing.T) {
	tombstonetest.Run(t, func(t *testing.T, now func() time.Time) tombstone.Store {
		s, err := tombstone.NewMemStore(tombstone.MemStoreConfig{Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}
