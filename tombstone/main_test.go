package tombstone_test

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/switchyard-dev/switchyard/conman/process"
)

func TestMain(m *testing.M) {
	process.Init() // the end-to-end test's containers run this binary as their init
	if os.Getenv("TOMBSTONE_TEST_WEBAPP") != "" {
		webApp() // ... and as the repl's web app
		return
	}
	goleak.VerifyTestMain(m)
}

// webApp is the repl of the end-to-end test: a page that names the VM address it runs on
// (conman exports it as HOST), and a WebSocket echo on /ws.
func webApp() {
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", wsEcho)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s, forwarded for %s\n", os.Getenv("TOMBSTONE_TEST_VM"), r.Header.Get("X-Forwarded-For"))
	})
	addr := net.JoinHostPort(os.Getenv("HOST"), os.Getenv("PORT"))
	if err := http.ListenAndServe(addr, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
