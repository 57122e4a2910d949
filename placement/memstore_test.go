package placement_test

import (
	"testing"

	"github.com/switchyard-dev/switchyard/placement"
	"github.com/switchyard-dev/switchyard/placement/placementtest"
)

func TestMemStoreConformance(t *testing.T) {
	placementtest.TestStore(t, func(t *testing.T) placement.Store { return placement.NewMemStore() })
}

func TestMapStoreConformance(t *testing.T) {
	placementtest.TestStore(t, func(t *testing.T) placement.Store { return placement.NewMapStore() })
}
