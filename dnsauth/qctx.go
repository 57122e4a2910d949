package dnsauth

import (
	"context"
	"sync"
	"time"
)

// queryCtx is the context.Context of one query's directory calls: a deadline Timeout after the
// directory first asks for it (Deadline, Done or Err; an HTTP directory does so as its first
// lookup starts). Unlike context.WithTimeout it allocates nothing unless someone waits on Done,
// and reads no clock unless someone asks, so an in-process directory answers without garbage
// or time.Now, while an HTTP directory (which selects on Done) gets a real channel and timer. A
// queryCtx is reused by the next query only if Done was never called; otherwise it is cancelled
// and dropped, so nobody holding it sees it reset.
type queryCtx struct {
	mu       sync.Mutex
	active   bool
	timeout  time.Duration
	deadline time.Time // zero until asked for
	done     chan struct{}
	timer    *time.Timer
	err      error
}

// start arms the deadline on the first call of a query and returns the context.
func (c *queryCtx) start(timeout time.Duration) context.Context {
	c.mu.Lock()
	if !c.active {
		c.active = true
		c.timeout = timeout
		c.deadline = time.Time{}
	}
	c.mu.Unlock()
	return c
}

// deadlineLocked returns the deadline, fixing it on first use in a query. Called with mu held.
func (c *queryCtx) deadlineLocked() time.Time {
	if c.deadline.IsZero() && c.active {
		c.deadline = time.Now().Add(c.timeout)
	}
	return c.deadline
}

func (c *queryCtx) Deadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.deadlineLocked(), true
}

func (c *queryCtx) Done() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done == nil {
		c.done = make(chan struct{})
		if c.err != nil {
			close(c.done)
		} else if d := time.Until(c.deadlineLocked()); d <= 0 {
			c.err = context.DeadlineExceeded
			close(c.done)
		} else {
			c.timer = time.AfterFunc(d, c.expire)
		}
	}
	return c.done
}

func (c *queryCtx) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = context.DeadlineExceeded
		close(c.done)
	}
}

func (c *queryCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	if c.active && !time.Now().Before(c.deadlineLocked()) {
		return context.DeadlineExceeded
	}
	return nil
}

func (c *queryCtx) Value(any) any { return nil }

// finish ends the query: it cancels the context and makes a ready for the next query.
func (c *queryCtx) finish(a *answer) {
	c.mu.Lock()
	used := c.done != nil
	if used {
		if c.err == nil {
			c.err = context.Canceled
			close(c.done)
		}
		if c.timer != nil {
			c.timer.Stop()
		}
	} else {
		c.active = false
		c.deadline = time.Time{}
		c.err = nil
	}
	c.mu.Unlock()
	if used {
		a.ctx = &queryCtx{}
	}
}
