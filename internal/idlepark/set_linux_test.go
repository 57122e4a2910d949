package idlepark

import (
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type woken struct {
	c net.Conn
	v int
}

// pair returns a connected client and the server side's net.Conn.
func pair(t *testing.T, ln net.Listener) (client, server net.Conn) {
	t.Helper()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() { client.Close() })
	return client, server
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	return ln
}

// modes runs f with connections that stay warm, and with connections that go cold at once.
func modes(t *testing.T, f func(t *testing.T, cold time.Duration)) {
	t.Run("warm", func(t *testing.T) { f(t, -1) })
	t.Run("cold", func(t *testing.T) { f(t, time.Nanosecond) })
}

func newSet(t *testing.T, cold time.Duration) (*Set[int], chan woken) {
	t.Helper()
	ch := make(chan woken, 1024)
	s := New(func(c net.Conn, v int) { ch <- woken{c, v} }, cold)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, ch
}

// settle waits, in the cold mode, until the n parked connections are cold.
func settle(t *testing.T, s *Set[int], cold time.Duration, n int) {
	t.Helper()
	if cold <= 0 {
		return
	}
	require.Eventually(t, func() bool {
		warm, cold := s.Stats()
		return warm == 0 && cold == n
	}, 10*time.Second, time.Millisecond, "connections did not go cold")
}

func wait(t *testing.T, ch chan woken) woken {
	t.Helper()
	select {
	case w := <-ch:
		t.Cleanup(func() { w.c.Close() })
		return w
	case <-time.After(10 * time.Second):
		t.Fatal("no connection woke")
		return woken{}
	}
}

func readN(t *testing.T, c net.Conn, n int) string {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
	b := make([]byte, n)
	_, err := io.ReadFull(c, b)
	require.NoError(t, err)
	return string(b)
}

func TestParkWakesWhenTheClientSends(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, ch := newSet(t, cold)
		client, server := pair(t, ln)
		require.NoError(t, s.Park(server, time.Minute, 42))
		require.Equal(t, 1, s.Len())
		settle(t, s, cold, 1)
		if cold > 0 {
			// The runtime's descriptor is closed: the old net.Conn is done with.
			_, err := server.Write([]byte("x"))
			require.ErrorIs(t, err, net.ErrClosed)
		}
		select {
		case <-ch:
			t.Fatal("woke before the client sent anything")
		case <-time.After(50 * time.Millisecond):
		}

		_, err := client.Write([]byte("hello"))
		require.NoError(t, err)
		w := wait(t, ch)
		require.Equal(t, 42, w.v)
		require.Equal(t, 0, s.Len())
		require.Equal(t, "hello", readN(t, w.c, 5))
		require.Equal(t, client.LocalAddr().String(), w.c.RemoteAddr().String())
		_, err = w.c.Write([]byte("world"))
		require.NoError(t, err)
		require.Equal(t, "world", readN(t, client, 5))

		// It parks again, and wakes again.
		require.NoError(t, s.Park(w.c, time.Minute, 43))
		settle(t, s, cold, 1)
		_, err = client.Write([]byte("again"))
		require.NoError(t, err)
		w2 := wait(t, ch)
		require.Equal(t, 43, w2.v)
		require.Equal(t, "again", readN(t, w2.c, 5))
	})
}

func TestParkWithBytesAlreadyWaiting(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, ch := newSet(t, cold)
		client, server := pair(t, ln)
		_, err := client.Write([]byte("early"))
		require.NoError(t, err)
		// Let the bytes reach the server's socket before it parks.
		require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
		rc, err := server.(*net.TCPConn).SyscallConn()
		require.NoError(t, err)
		for range 1000 {
			n := 0
			require.NoError(t, rc.Control(func(fd uintptr) { n = inq(fd) }))
			if n == 5 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		require.NoError(t, s.Park(server, time.Minute, 1))
		w := wait(t, ch)
		require.Equal(t, "early", readN(t, w.c, 5))
	})
}

func TestParkWakesWhenTheClientCloses(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, ch := newSet(t, cold)
		client, server := pair(t, ln)
		require.NoError(t, s.Park(server, time.Minute, 7))
		require.NoError(t, client.Close())
		w := wait(t, ch)
		require.NoError(t, w.c.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err := w.c.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF)
	})
}

func TestParkTimeoutClosesTheConnection(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, ch := newSet(t, cold)
		clientA, serverA := pair(t, ln)
		clientB, serverB := pair(t, ln)
		start := time.Now()
		require.NoError(t, s.Park(serverA, 100*time.Millisecond, 1))
		require.NoError(t, s.Park(serverB, time.Hour, 2))
		require.NoError(t, clientA.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err := clientA.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF, "the server closes a connection parked past its timeout")
		require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
		require.Equal(t, 1, s.Len())
		select {
		case w := <-ch:
			t.Fatalf("connection %d woke", w.v)
		default:
		}
		// The other one, with a longer timeout, is still there and wakes.
		_, err = clientB.Write([]byte("b"))
		require.NoError(t, err)
		require.Equal(t, 2, wait(t, ch).v)
	})
}

// counted is a wrapper as connlimit's: it counts open connections until Close.
type counted struct {
	net.Conn
	open *atomic.Int32
	once sync.Once
}

func (c *counted) NetConn() net.Conn      { return c.Conn }
func (c *counted) SetNetConn(nc net.Conn) { _ = c.Conn.Close(); c.Conn = nc }
func (c *counted) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.open.Add(-1) })
	return err
}

func TestParkKeepsTheWrapper(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, ch := newSet(t, cold)
		var open atomic.Int32
		wrap := func(c net.Conn) *counted { open.Add(1); return &counted{Conn: c, open: &open} }

		client, server := pair(t, ln)
		wc := wrap(server)
		require.True(t, Parkable(wc))
		require.NoError(t, s.Park(wc, time.Minute, 1))
		settle(t, s, cold, 1)
		require.EqualValues(t, 1, open.Load(), "a parked connection stays counted")
		_, err := client.Write([]byte("hi"))
		require.NoError(t, err)
		w := wait(t, ch)
		require.Same(t, wc, w.c.(*counted), "the wrapper comes back")
		require.Equal(t, "hi", readN(t, w.c, 2))
		require.NoError(t, w.c.Close())
		require.EqualValues(t, 0, open.Load())

		// Expired and closed: the wrapper is closed too.
		_, server2 := pair(t, ln)
		require.NoError(t, s.Park(wrap(server2), 20*time.Millisecond, 2))
		_, server3 := pair(t, ln)
		require.NoError(t, s.Park(wrap(server3), time.Hour, 3))
		require.Eventually(t, func() bool { return open.Load() == 1 }, 10*time.Second, 5*time.Millisecond)
		require.NoError(t, s.Close())
		require.EqualValues(t, 0, open.Load())
	})
}

type plainConn struct{ net.Conn }

func TestParkRefuses(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, _ := newSet(t, cold)
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		require.ErrorIs(t, s.Park(a, time.Minute, 1), ErrNotParkable)
		client, server := pair(t, ln)
		// A wrapper that cannot swap its connection is not parked (it would lose its socket).
		require.ErrorIs(t, s.Park(plainConn{server}, time.Minute, 1), ErrNotParkable)
		require.ErrorIs(t, s.Park(server, 0, 1), ErrNotParkable)
		require.NoError(t, s.Close())
		require.ErrorIs(t, s.Park(server, time.Minute, 1), ErrClosed)
		// The caller still has a working connection after each refusal.
		_, err := server.Write([]byte("ok"))
		require.NoError(t, err)
		require.Equal(t, "ok", readN(t, client, 2))
	})
}

func TestDrainGivesEveryConnectionBack(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, ch := newSet(t, cold)
		clients := make([]net.Conn, 5)
		for i := range clients {
			c, server := pair(t, ln)
			clients[i] = c
			require.NoError(t, s.Park(server, time.Minute, i))
		}
		settle(t, s, cold, 5)
		got := map[int]net.Conn{}
		s.Drain(func(c net.Conn, v int) { got[v] = c })
		require.Len(t, got, 5)
		require.Equal(t, 0, s.Len())
		for i, c := range got {
			_, err := fmt.Fprintf(c, "%d", i)
			require.NoError(t, err)
			require.Equal(t, fmt.Sprint(i), readN(t, clients[i], 1))
			c.Close()
		}
		require.Empty(t, ch)
		require.ErrorIs(t, s.Park(got[0], time.Minute, 0), ErrClosed)
	})
}

func TestCloseClosesParkedConnections(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		ln := listen(t)
		s, _ := newSet(t, cold)
		client, server := pair(t, ln)
		require.NoError(t, s.Park(server, time.Minute, 1))
		require.NoError(t, s.Close())
		require.NoError(t, client.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, err := client.Read(make([]byte, 1))
		require.ErrorIs(t, err, io.EOF)
	})
}

// TestManyParkedConnectionsHoldNoGoroutines parks many connections, checks that they hold no
// goroutine each, and wakes them in an order of the clients' choosing: each comes back with its
// own value and its own bytes.
func TestManyParkedConnectionsHoldNoGoroutines(t *testing.T) {
	modes(t, func(t *testing.T, cold time.Duration) {
		const n = 300
		ln := listen(t)
		s, ch := newSet(t, cold)
		clients := make([]net.Conn, n)
		servers := make([]net.Conn, n)
		for i := range n {
			clients[i], servers[i] = pair(t, ln)
		}
		before := runtime.NumGoroutine()
		for i := range n {
			require.NoError(t, s.Park(servers[i], time.Minute, i))
		}
		require.Equal(t, n, s.Len())
		settle(t, s, cold, n)
		require.LessOrEqual(t, runtime.NumGoroutine(), before+3, "parked connections hold no goroutine")

		for i := n - 1; i >= 0; i -= 2 { // every other one, from the end
			_, err := fmt.Fprintf(clients[i], "%04d", i)
			require.NoError(t, err)
		}
		for range n / 2 {
			w := wait(t, ch)
			require.Equal(t, fmt.Sprintf("%04d", w.v), readN(t, w.c, 4))
		}
		require.Equal(t, n/2, s.Len())
	})
}

func TestNilSet(t *testing.T) {
	var s *Set[int]
	require.ErrorIs(t, s.Park(nil, time.Second, 0), ErrNotParkable)
	require.Equal(t, 0, s.Len())
	require.NoError(t, s.Close())
	s.Drain(func(net.Conn, int) {})
}

// BenchmarkWake measures a parked connection's round trip: the client sends a byte, the
// connection wakes (on a new goroutine), answers and parks again; cold, it also goes cold before
// each byte. Compare BenchmarkWakeNetpoller, the same round trip with a goroutine blocked in Read.
func BenchmarkWake(b *testing.B) {
	b.Run("warm", func(b *testing.B) { benchWake(b, false) })
	b.Run("cold", func(b *testing.B) { benchWake(b, true) })
}

func benchWake(b *testing.B, cold bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	done := make(chan struct{}, 1)
	var s *Set[int]
	s = New(func(c net.Conn, _ int) {
		buf := make([]byte, 1)
		if _, err := c.Read(buf); err != nil {
			c.Close()
			return
		}
		if s.Park(c, time.Minute, 0) != nil {
			c.Close()
		}
		if cold {
			s.chillAll()
		}
		done <- struct{}{}
	}, -1)
	defer s.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(b, err)
	require.NoError(b, s.Park(server, time.Minute, 0))
	if cold {
		s.chillAll()
	}
	roundTrips(b, client, done)
}

// chillAll makes every warm connection cold.
func (s *Set[T]) chillAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e := s.warm.head; e != nil; e = s.warm.head {
		s.unlinkWarm(e)
	}
	for _, e := range s.entries {
		if e.c != nil && !s.chill(e) {
			panic("chill failed")
		}
	}
	if s.cold != len(s.entries) {
		panic("cold count")
	}
}

func BenchmarkWakeNetpoller(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(b, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(b, err)
	defer server.Close()
	done := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 1)
		for {
			if _, err := server.Read(buf); err != nil {
				return
			}
			done <- struct{}{}
		}
	}()
	roundTrips(b, client, done)
}

// roundTrips sends a byte b.N times, each once the server has read the last (done), and reports
// the process's CPU time per round trip beside the wall-clock time.
func roundTrips(b *testing.B, client net.Conn, done chan struct{}) {
	buf := make([]byte, 1)
	b.ResetTimer()
	start := cpuTime()
	for range b.N {
		if _, err := client.Write(buf); err != nil {
			b.Fatal(err)
		}
		<-done
	}
	b.ReportMetric(float64((cpuTime()-start).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

func cpuTime() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkParkedHeap reports what parking changes in the live heap, per connection: the heap
// after a GC with b.N connections parked, less the heap with the same connections open and held
// by the caller. Warm, that is the Set's own entry (the net.Conn is still there); cold, the entry
// less the net.Conn the Set closed. The runtime's poll descriptor of a warm connection is
// off-heap (about 0.3 KiB more, kept by the runtime for reuse) and not counted.
func BenchmarkParkedHeap(b *testing.B) {
	b.Run("warm", func(b *testing.B) { benchParkedHeap(b, false) })
	b.Run("cold", func(b *testing.B) { benchParkedHeap(b, true) })
}

func benchParkedHeap(b *testing.B, cold bool) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(b, err)
	defer ln.Close()
	clients := make([]net.Conn, 0, b.N)
	servers := make([]net.Conn, 0, b.N)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
		for _, c := range servers {
			c.Close()
		}
	}()
	for range b.N {
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(b, err)
		s, err := ln.Accept()
		require.NoError(b, err)
		clients, servers = append(clients, c), append(servers, s)
	}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	s := New(func(c net.Conn, _ int) { c.Close() }, -1)
	defer s.Close()
	before := heap()
	b.ResetTimer()
	for i, c := range servers {
		require.NoError(b, s.Park(c, time.Hour, i))
	}
	if cold {
		s.chillAll()
	}
	clear(servers) // the Set has them
	servers = servers[:0]
	b.StopTimer()
	after := heap()
	b.ReportMetric(float64(int64(after)-int64(before))/float64(b.N), "heap-B/conn")
	runtime.KeepAlive(clients)
}

// TestParkFD: a socket parked as a descriptor (Detach's) wakes as a cold one does, inside its
// wrapper; an expired one is closed, wrapper and all; Attach gives a descriptor back as a
// net.Conn.
func TestParkFD(t *testing.T) {
	ln := listen(t)
	s, ch := newSet(t, -1)
	var open atomic.Int32
	wrap := func(c net.Conn) *counted { open.Add(1); return &counted{Conn: c, open: &open} }

	client, server := pair(t, ln)
	fd, w, err := Detach(wrap(server))
	require.NoError(t, err)
	require.NotNil(t, w)
	require.NoError(t, s.ParkFD(fd, w, time.Minute, 1))
	require.Equal(t, 1, s.Len())
	_, cold := s.Stats()
	require.Equal(t, 1, cold, "parked cold from the start")
	require.EqualValues(t, 1, open.Load())
	_, err = client.Write([]byte("fd"))
	require.NoError(t, err)
	woke := wait(t, ch)
	require.Same(t, w, woke.c.(Rewrapper), "the wrapper comes back")
	require.Equal(t, "fd", readN(t, woke.c, 2))
	_, err = woke.c.Write([]byte("ok"))
	require.NoError(t, err)
	require.Equal(t, "ok", readN(t, client, 2))
	require.NoError(t, woke.c.Close())
	require.EqualValues(t, 0, open.Load())

	// Past its timeout it is closed: the client reads EOF, the wrapper is closed.
	client2, server2 := pair(t, ln)
	fd2, w2, err := Detach(wrap(server2))
	require.NoError(t, err)
	require.NoError(t, s.ParkFD(fd2, w2, 20*time.Millisecond, 2))
	require.NoError(t, client2.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, err = client2.Read(make([]byte, 1))
	require.ErrorIs(t, err, io.EOF)
	require.Eventually(t, func() bool { return open.Load() == 0 }, 10*time.Second, 5*time.Millisecond)

	// Attach makes a net.Conn of a detached socket again; refusals leave the caller the socket.
	client3, server3 := pair(t, ln)
	fd3, _, err := Detach(server3)
	require.NoError(t, err)
	require.ErrorIs(t, s.ParkFD(fd3, nil, 0, 3), ErrNotParkable)
	c3, err := Attach(fd3, nil)
	require.NoError(t, err)
	_, err = client3.Write([]byte("x"))
	require.NoError(t, err)
	require.Equal(t, "x", readN(t, c3, 1))
	require.NoError(t, c3.Close())
	require.NoError(t, s.Close())
	_, _, err = Detach(plainConn{client3})
	require.ErrorIs(t, err, ErrNotParkable)
}
