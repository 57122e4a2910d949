package sessions

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks the whole package's tests (Proxy and Hosting) for leaked goroutines. The
// re-executed child of TestSessionsReusePortTwoProcesses runs its proxy instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childMain())
	}
	goleak.VerifyTestMain(m)
}
