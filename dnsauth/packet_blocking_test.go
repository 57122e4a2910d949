//go:build linux && (amd64 || arm64)

package dnsauth

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startBlocking serves n sockets with Blocking and returns the server, its loops' thread IDs
// and Serve's result.
func startBlocking(t *testing.T, n int) (*PacketServer, []int, <-chan error) {
	t.Helper()
	h, err := New(Config{Zones: []Zone{{Name: "repl.test"}}, Directory: oneRepl{}})
	if err != nil {
		t.Fatal(err)
	}
	conns, err := ListenUDP(context.Background(), "127.0.0.1:0", n)
	if err != nil {
		t.Fatal(err)
	}
	s := &PacketServer{Handler: h, Conns: conns, Blocking: true, tids: make(chan int, n)}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	var tids []int
	for range n {
		tids = append(tids, <-s.tids)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	return s, tids, done
}

func ask(t *testing.T, addr string) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion("blog.replbot.repl.test.", dns.TypeA)
	c := &dns.Client{Timeout: 5 * time.Second}
	for i := range 3 { // the Handler, then the cache
		r, _, err := c.Exchange(m, addr)
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("query %d: %v, %v", i, r, err)
		}
	}
}

// threadsGone waits (bounded) until none of tids is a thread of this process any more: a
// goroutine that ends locked to its thread takes the thread with it, shortly after.
func threadsGone(t *testing.T, tids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, tid := range tids {
		if tid == os.Getpid() {
			continue // the main thread is unlocked, not ended (it cannot end)
		}
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid)); os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the loop's thread %d is still alive after its loop ended", tid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// TestPacketServerBlockingShutdown: the blocking loops answer, Shutdown wakes them from a
// blocked read at once (the read timeout is an hour here, so only the wake can end them), and
// their threads end with them.
func TestPacketServerBlockingShutdown(t *testing.T) {
	defer func(d time.Duration) { blockingTimeout = d }(blockingTimeout)
	blockingTimeout = time.Hour
	s, tids, done := startBlocking(t, 2)
	if tids[0] == tids[1] {
		t.Fatalf("loops share a thread: %v", tids)
	}
	ask(t, s.Conns[0].LocalAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with the loops blocked in a read: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	threadsGone(t, tids)
	if err := s.Serve(); err == nil {
		t.Fatal("Serve after Shutdown succeeded")
	}
}

// TestPacketServerBlockingClosed: a socket closed directly, without Shutdown (whose close
// wakes no blocked reader), still ends its loop, at the next read timeout.
func TestPacketServerBlockingClosed(t *testing.T) {
	defer func(d time.Duration) { blockingTimeout = d }(blockingTimeout)
	blockingTimeout = 20 * time.Millisecond
	s, tids, done := startBlocking(t, 1)
	ask(t, s.Conns[0].LocalAddr().String())
	closed := make(chan error, 1)
	go func() { closed <- s.Conns[0].Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close of a socket a blocking loop reads hangs")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the loop of a closed socket did not end")
	}
	threadsGone(t, tids)
}
