package conman_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/coder/websocket"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
)

// A conman VM: a Server over the process runtime, attached to over WebSocket the way the session
// proxy does it. (Isolation None so that the example runs anywhere; on a VM you keep the default
// and run as root.)
func ExampleServer() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "conman-example")
	defer os.RemoveAll(dir)
	rt, err := process.New(process.Config{StateDir: dir, Isolation: process.None})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rt.Close()
	srv, err := conman.New(ctx, conman.Config{Runtime: rt, Credential: "internal-secret"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Shutdown(ctx)
	ts := httptest.NewServer(srv)
	defer ts.Close()

	// Without the credential: 401.
	resp, _ := http.Get(ts.URL + "/healthz")
	resp.Body.Close()
	fmt.Println("no credential:", resp.StatusCode)

	// Attach to repl "demo": its container starts, its shell runs on a pty.
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(ts.URL, "http")+"/v1/repls/demo/attach?cols=80&rows=24",
		&websocket.DialOptions{HTTPHeader: http.Header{conman.HeaderCredential: {"internal-secret"}}})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = c.Write(ctx, websocket.MessageBinary, []byte("echo answer=$((6*7)); exit\n"))
	var out strings.Builder
	for {
		_, b, err := c.Read(ctx)
		if err != nil {
			fmt.Println("closed:", websocket.CloseStatus(err))
			break
		}
		out.Write(b)
	}
	fmt.Println("saw answer=42:", strings.Contains(out.String(), "answer=42"))
	fmt.Println("running:", srv.Running())
	// Output:
	// no credential: 401
	// closed: StatusNormalClosure
	// saw answer=42: true
	// running: [demo]
}

func ExampleValidID() {
	for _, id := range []string{"blog-7f3a", "Blog", "../etc", ""} {
		fmt.Printf("%q %v\n", id, conman.ValidID(id))
	}
	// Output:
	// "blog-7f3a" true
	// "Blog" false
	// "../etc" false
	// "" false
}

// An upgrade in place, the old process's side: on a connection from the new conman process,
// stop serving requests and hand over the listener, the shells and the live attach connections.
func ExampleServer_Handoff() {
	var (
		srv *conman.Server    // serving hs
		hs  *http.Server      // on ln
		ln  *net.TCPListener  // the VM's conman address
		hl  *net.UnixListener // root-only, in the VM's state directory
	)
	ctx := context.Background()
	uc, err := hl.AcceptUnix()
	if err != nil {
		return
	}
	if err := conman.AcceptSuccessor(ctx, uc); err != nil {
		return // not a successor: nothing was stopped
	}
	lnFile, _ := ln.File() // a duplicate: the socket outlives our Close
	_ = hs.Shutdown(ctx)   // new connections wait in the socket's queue
	if err := srv.Handoff(ctx, uc, lnFile); err != nil {
		fmt.Println("sessions closed with 1012:", err)
	}
	// Exit without draining: the containers, shells and sessions run on in the successor.
}

// The new process's side: take over from the running conman, then serve what it handed over.
func ExampleReceiveHandoff() {
	ctx := context.Background()
	c, err := net.Dial("unix", "/var/lib/conman/handoff.sock")
	if err != nil {
		return
	}
	in, err := conman.ReceiveHandoff(ctx, c.(*net.UnixConn))
	if err != nil {
		return
	}
	rt, _ := process.New(process.Config{StateDir: "/var/lib/conman"}) // the same state
	srv, _ := conman.New(ctx, conman.Config{Runtime: rt, Credential: os.Getenv("CONMAN_CREDENTIAL"), Inherit: in})
	ln, _ := net.FileListener(in.Files[0])
	_ = http.Serve(ln, srv)
}
