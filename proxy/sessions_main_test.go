package proxy

import (
	"os"
	"testing"

	"github.com/switchyard-dev/switchyard/conman/process"
	"go.uber.org/goleak"
)

// TestMain checks the whole package's tests (Sessions and Hosting) for leaked goroutines. The
// re-executed child of TestSessionsReusePortTwoProcesses runs its proxy instead of the tests,
// and a re-executed container init runs process.Init.
func TestMain(m *testing.M) {
	process.Init() // the test binary is the init of TestSessionsEndToEnd's containers
	if os.Getenv(sessionsChildEnv) != "" {
		os.Exit(sessionsChildMain())
	}
	goleak.VerifyTestMain(m)
}
