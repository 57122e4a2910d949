//go:build linux

package hosting

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLoopParksLongIdleConnections: a connection idle in an event loop for ParkColdAfter goes
// to the park set (a descriptor and a few words), wakes when the client sends, and goes back
// to a loop; with parking off it stays in the loop until IdleTimeout.
func TestLoopParksLongIdleConnections(t *testing.T) {
	s, addr := newParkServer(t, func(c *ServerConfig) {
		c.EventLoops = 0
		c.ParkColdAfter = 50 * time.Millisecond
	}, nil)
	c := dialClient(t, addr)
	require.Equal(t, http.StatusOK, c.get(parkGET))
	require.Eventually(t, func() bool { return s.Looped() == 1 }, 10*time.Second, time.Millisecond, "in the loop after its request")
	require.Eventually(t, func() bool { return s.Parked() == 1 && s.Looped() == 0 }, 10*time.Second, time.Millisecond, "parked after ParkColdAfter")
	require.Equal(t, http.StatusOK, c.get(parkGET))
	require.Eventually(t, func() bool { return s.Looped() == 1 && s.Parked() == 0 }, 10*time.Second, time.Millisecond, "back in a loop")
	require.Equal(t, http.StatusOK, c.get(parkGET))

	// Parking off: the loop keeps it, and closes it at IdleTimeout.
	s2, addr2 := newParkServer(t, func(c *ServerConfig) {
		c.EventLoops = 0
		c.ParkIdleAfter = -1
		c.IdleTimeout = 300 * time.Millisecond
	}, nil)
	c2 := dialClient(t, addr2)
	start := time.Now()
	require.Equal(t, http.StatusOK, c2.get(parkGET))
	require.Eventually(t, func() bool { return s2.Looped() == 1 }, 10*time.Second, time.Millisecond)
	require.True(t, c2.closedWithin(10*time.Second))
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
	require.Zero(t, s2.Parked())
	require.Eventually(t, func() bool { return s2.Looped() == 0 }, 10*time.Second, time.Millisecond)
}
