package eventloop

import (
	"runtime"
	"sync/atomic"
	"time"
)

// MaxFrame is the largest frame from the backend, header included, a loop relays (conman writes
// a pty read of up to 32 KiB as one frame); Frames should stop at a larger one.
const MaxFrame = 64 << 10

// clientRead is how much one read of the client takes; a read that fills it is bulk data, which
// the caller's goroutines splice.
const clientRead = 64 << 10

// DefaultWait bounds one epoll wait when Config.Wait is zero.
const DefaultWait = 20 * time.Millisecond

// Hand-back reasons, the label values of Config.HandBacks.
var Reasons = []string{"bulk", "frame", "eof", "error", "blocked", "drain", "refused", "gomaxprocs"}

// A Budget counts the Ps held by running loops of every Group that shares it and lets a loop
// start only while at least one P is left to the rest of the program. The zero value is ready
// to use; share one per process.
type Budget struct {
	held atomic.Int32
}

// Held returns the number of loops holding a P.
func (b *Budget) Held() int { return int(b.held.Load()) }

func (b *Budget) take() bool {
	for {
		n := b.held.Load()
		if int(n)+1 >= runtime.GOMAXPROCS(0) {
			return false
		}
		if b.held.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (b *Budget) release() { b.held.Add(-1) }

// exhausted reports whether the loops hold every P (GOMAXPROCS was lowered under them).
func (b *Budget) exhausted() bool { return runtime.GOMAXPROCS(0) <= int(b.held.Load()) }
