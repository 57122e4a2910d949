package proxy

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks the whole package's tests (Sessions and Hosting) for leaked goroutines. The
// re-executed child of TestSessionsReusePortTwoProcesses runs its proxy instead of the tests.
func TestMain(m *testing.M) {
	if os.Getenv(sessionsChildEnv) != "" {
		os.Exit(sessionsChildMain())
	}
	goleak.VerifyTestMain(m)
}
