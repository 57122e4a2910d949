package conman

import (
	"context"
	"errors"
	"time"

	"github.com/switchyard-dev/switchyard/placement"
)

// agent registers the VM with placement, then heartbeats until the server stops. A heartbeat
// placement does not recognise (the control plane restarted, or declared the VM dead) makes the
// agent register again.
func (s *Server) agent() {
	defer s.wg.Done()
	defer close(s.agentDone)
	registered := false
	backoff := 100 * time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	var last struct {
		at  time.Time
		cpu time.Duration
	}
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.cfg.HeartbeatInterval)
		if !registered {
			vm := s.cfg.VM
			vm.State = placement.Active
			s.mu.Lock()
			if s.draining {
				vm.State = placement.Draining
			}
			s.mu.Unlock()
			if _, err := s.cfg.Placement.Register(ctx, vm); err != nil {
				cancel()
				if s.ctx.Err() != nil {
					return
				}
				s.log.Warn("conman: register with placement", "vm", vm.ID, "err", err, "retry_in", backoff)
				t.Reset(backoff)
				backoff = min(backoff*2, s.cfg.HeartbeatInterval)
				continue
			}
			s.log.Info("conman: registered with placement", "vm", vm.ID, "addr", vm.Addr)
			registered, backoff = true, 100*time.Millisecond
			s.registeredOnce.Do(func() { close(s.registered) })
		}
		hb := s.heartbeat(ctx, &last.at, &last.cpu)
		err := s.cfg.Placement.Heartbeat(ctx, hb)
		if err == nil && s.cfg.OrphanGrace > 0 {
			s.stopOrphans(ctx)
		}
		cancel()
		switch {
		case err == nil:
			s.m.heartbeats.WithLabelValues("ok").Inc()
		case errors.Is(err, placement.ErrNotFound):
			s.m.heartbeats.WithLabelValues("error").Inc()
			s.log.Warn("conman: placement does not know this VM; registering again", "vm", hb.VM)
			registered = false
			t.Reset(0)
			continue
		default:
			s.m.heartbeats.WithLabelValues("error").Inc()
			if s.ctx.Err() == nil {
				s.log.Warn("conman: heartbeat", "vm", hb.VM, "err", err)
			}
		}
		t.Reset(s.cfg.HeartbeatInterval)
	}
}

// heartbeat builds the VM's report: the running repls and their summed usage (CPU as the rate
// since the previous heartbeat, in millicores).
func (s *Server) heartbeat(ctx context.Context, lastAt *time.Time, lastCPU *time.Duration) placement.Heartbeat {
	hb := placement.Heartbeat{VM: s.cfg.VM.ID, Build: s.cfg.VM.Build, Running: []string{}}
	s.mu.Lock()
	ids := make([]string, 0, len(s.repls))
	for id, r := range s.repls {
		select {
		case <-r.ready:
			if r.err == nil {
				ids = append(ids, id)
			}
		default:
		}
	}
	s.mu.Unlock()
	var cpu time.Duration
	for _, id := range ids {
		st, err := s.rt.Inspect(ctx, id)
		if err != nil || st.State != Running {
			continue
		}
		hb.Running = append(hb.Running, id)
		hb.Used.MemoryBytes += st.Usage.MemoryBytes
		cpu += st.Usage.CPU
	}
	hb.Used.Containers = len(hb.Running)
	now := time.Now()
	if !lastAt.IsZero() && cpu >= *lastCPU {
		if el := now.Sub(*lastAt); el > 0 {
			hb.Used.CPUMilli = int64(float64(cpu-*lastCPU) / float64(el) * 1000)
		}
	}
	*lastAt, *lastCPU = now, cpu
	return hb
}

// stopOrphans stops the repls that placement has assigned to another VM for OrphanGrace.
// Unassigned repls are left alone: placement adopts them from the heartbeat.
func (s *Server) stopOrphans(ctx context.Context) {
	now := time.Now()
	s.mu.Lock()
	var check []*repl
	for _, r := range s.repls {
		select {
		case <-r.ready:
			if r.err == nil && !r.stopping {
				check = append(check, r)
			}
		default:
		}
	}
	s.mu.Unlock()
	for _, r := range check {
		a, err := s.cfg.Placement.Lookup(ctx, r.id)
		if err != nil && !errors.Is(err, placement.ErrNotFound) {
			continue // placement unreachable: decide nothing
		}
		elsewhere := err == nil && a.VM != s.cfg.VM.ID
		s.mu.Lock()
		switch {
		case !elsewhere:
			r.orphan = time.Time{}
		case r.orphan.IsZero():
			r.orphan = now
		}
		since := r.orphan
		s.mu.Unlock()
		if since.IsZero() || now.Sub(since) < s.cfg.OrphanGrace || now.Sub(r.started) < s.cfg.OrphanGrace {
			continue
		}
		s.log.Warn("conman: stopping repl placement assigned to another VM", "repl", r.id,
			"assigned_to", a.VM, "since", since)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sctx, cancel := context.WithTimeout(s.ctx, s.cfg.StopGrace+10*time.Second)
			defer cancel()
			if err := s.Stop(sctx, r.id); err != nil && !errors.Is(err, ErrNotFound) {
				s.log.Warn("conman: stop orphaned repl", "repl", r.id, "err", err)
			}
		}()
	}
}
