//go:build !linux

package hosting

// Event loops are Linux-only: elsewhere connections keep their goroutines.
const loopsSupported = false

type loops struct{}

type loopState struct{}

func newLoops(*Server, int) *loops  { return nil }
func (*loops) adopt(*fastConn) bool { return false }
func (*loops) count() int           { return 0 }
func (*loops) shutdown()            {}
func (*loops) close()               {}
