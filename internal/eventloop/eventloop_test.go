package eventloop

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// childEnv makes the test binary run one test as a child process (see TestNoHangWithoutPreemption).
const childEnv = "EVENTLOOP_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// pair is one session's sockets: the loop owns client and backend; the test speaks through
// clientPeer (as the client) and backendPeer (as conman).
type pair struct {
	client, clientPeer   int
	backend, backendPeer int
}

func newPair(t *testing.T) pair {
	t.Helper()
	c, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range []int{c[0], b[0]} {
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	p := pair{client: c[0], clientPeer: c[1], backend: b[0], backendPeer: b[1]}
	t.Cleanup(func() {
		for _, fd := range []int{p.client, p.clientPeer, p.backend, p.backendPeer} {
			unix.Close(fd)
		}
	})
	return p
}

// relays writes msg to from and checks that it arrives, whole, at to.
func relays(t *testing.T, from, to int, msg string) {
	t.Helper()
	if _, err := unix.Write(from, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, len(msg))
	buf := make([]byte, 256)
	for len(got) < len(msg) {
		n, err := unix.Read(to, buf)
		if err != nil || n == 0 {
			t.Fatalf("read: %d, %v", n, err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != msg {
		t.Fatalf("relayed %q, want %q", got, msg)
	}
}

type testGroup struct {
	*Group
	inLoop    prometheus.Gauge
	handBacks *prometheus.CounterVec
}

// newTestGroup returns a one-loop group that relays everything from the backend as whole frames.
func newTestGroup(t *testing.T, budget *Budget) testGroup {
	t.Helper()
	tg := testGroup{
		inLoop:    prometheus.NewGauge(prometheus.GaugeOpts{Name: "in_loop"}),
		handBacks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hand_backs"}, []string{"reason"}),
	}
	tg.Group = New(Config{Loops: 1, Budget: budget, Frames: func(p []byte) (int, bool) { return len(p), false },
		InLoop: tg.inLoop, HandBacks: tg.handBacks})
	if tg.Group == nil {
		t.Fatalf("New returned nil at GOMAXPROCS %d", runtime.GOMAXPROCS(0))
	}
	return tg
}

// run starts a session of p in g and returns the channel its hand-back arrives on.
func (g testGroup) run(p pair) (*Session, <-chan Handback) {
	var c2b, b2c atomic.Int64
	s := g.Session(p.client, p.backend, nil, nil, &c2b, &b2c)
	done := make(chan Handback, 1)
	go func() { done <- s.Run() }()
	return s, done
}

// TestNoHangWithoutPreemption runs a loop with an idle session while the program collects
// garbage, with asynchronous preemption off: a stop-the-world must not wait for the loop's
// epoll wait forever. It runs in a child process so that a hang fails the test (the child is
// killed at the deadline) instead of freezing the test binary.
func TestNoHangWithoutPreemption(t *testing.T) {
	if os.Getenv(childEnv) != "" {
		noHangChild(t)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestNoHangWithoutPreemption$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1", "GODEBUG=asyncpreemptoff=1", "GOMAXPROCS=2")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("the child hung (killed after 60 s):\n%s", out.String())
	}
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out.String())
	}
	if !bytes.Contains(out.Bytes(), []byte("--- PASS: TestNoHangWithoutPreemption")) {
		t.Fatalf("child did not pass:\n%s", out.String())
	}
}

func noHangChild(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Fatal("the child needs GOMAXPROCS >= 2")
	}
	g := newTestGroup(t, new(Budget))
	p := newPair(t)
	s, done := g.run(p)
	// Only the loop relays between the pairs: a round trip proves the session is in it.
	relays(t, p.clientPeer, p.backendPeer, "before")
	relays(t, p.backendPeer, p.clientPeer, "frame")
	// The session is idle and the loop waits in epoll_pwait, holding its P.
	for range 3 {
		runtime.GC()
	}
	relays(t, p.clientPeer, p.backendPeer, "after")
	relays(t, p.backendPeer, p.clientPeer, "frame")
	s.HandBack()
	hb := <-done
	if hb.Client != p.client || hb.Backend != p.backend {
		t.Errorf("handed back descriptors %d, %d; want %d, %d", hb.Client, hb.Backend, p.client, p.backend)
	}
	if n := testutil.ToFloat64(g.handBacks.WithLabelValues("drain")); n != 1 {
		t.Errorf("drain hand-backs = %v, want 1", n)
	}
	g.Wait()
}

// TestBudget: loops sharing a Budget leave one P to the rest of the program. At GOMAXPROCS 2
// one loop runs; the second group's session is refused until the first loop has stopped.
func TestBudget(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	budget := new(Budget)
	a, b := newTestGroup(t, budget), newTestGroup(t, budget)
	pa, pb := newPair(t), newPair(t)

	sa, doneA := a.run(pa)
	relays(t, pa.clientPeer, pa.backendPeer, "a")
	if budget.Held() != 1 {
		t.Fatalf("held = %d, want 1", budget.Held())
	}
	_, doneB := b.run(pb)
	hb := <-doneB
	if hb.Client != pb.client || hb.Backend != pb.backend {
		t.Errorf("refused session's descriptors %d, %d; want %d, %d", hb.Client, hb.Backend, pb.client, pb.backend)
	}
	if n := testutil.ToFloat64(b.handBacks.WithLabelValues("refused")); n != 1 {
		t.Errorf("refused = %v, want 1", n)
	}

	sa.HandBack()
	<-doneA
	a.Wait()
	if budget.Held() != 0 {
		t.Fatalf("held = %d after the loop stopped, want 0", budget.Held())
	}
	sb, doneB := b.run(pb)
	relays(t, pb.clientPeer, pb.backendPeer, "b")
	sb.HandBack()
	<-doneB
	b.Wait()
}

// TestGOMAXPROCSLowered: when GOMAXPROCS falls to the number of loops holding Ps, a loop gives
// its sessions back and stops, within its wait bound.
func TestGOMAXPROCSLowered(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(2))
	g := newTestGroup(t, new(Budget))
	p := newPair(t)
	_, done := g.run(p)
	relays(t, p.clientPeer, p.backendPeer, "in the loop")
	runtime.GOMAXPROCS(1)
	<-done
	g.Wait()
	if n := testutil.ToFloat64(g.handBacks.WithLabelValues("gomaxprocs")); n != 1 {
		t.Errorf("gomaxprocs hand-backs = %v, want 1", n)
	}
}
