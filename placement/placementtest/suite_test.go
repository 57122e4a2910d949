package placementtest_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/placement/placementtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// The suite checks itself against the reference store.
func TestMapStore(t *testing.T) {
	placementtest.TestStore(t, func(t *testing.T) placement.Store { return placement.NewMapStore() })
}
