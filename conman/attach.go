package conman

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/switchyard-dev/switchyard/internal/wsconn"

	"github.com/switchyard-dev/switchyard/placement"
)

// resizeMessage is the text message that resizes an attach session's pty.
type resizeMessage struct {
	Type string `json:"type"`
	Cols int    `json:"cols"`
	Rows int    `json:"rows"`
}

// ParseControl parses a text (control) message of an attach session. It returns the new size
// and true for a valid resize, false for a well-formed message of another type (ignored, for
// forward compatibility), and an ErrInvalid error for anything else.
func ParseControl(data []byte) (WindowSize, bool, error) {
	var m resizeMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return WindowSize{}, false, fmt.Errorf("%w: text messages must be JSON control messages", ErrInvalid)
	}
	if m.Type != "resize" {
		return WindowSize{}, false, nil
	}
	if m.Cols < 1 || m.Rows < 1 || m.Cols > 10000 || m.Rows > 10000 {
		return WindowSize{}, false, fmt.Errorf("%w: resize needs cols and rows in 1-10000", ErrInvalid)
	}
	return WindowSize{Cols: uint16(m.Cols), Rows: uint16(m.Rows)}, true, nil
}

func parseSize(q string, def uint16) (uint16, error) {
	if q == "" {
		return def, nil
	}
	n, err := strconv.Atoi(q)
	if err != nil || n < 1 || n > 10000 {
		return 0, fmt.Errorf("%w: terminal size %q (1-10000)", ErrInvalid, q)
	}
	return uint16(n), nil
}

// serveAttach upgrades to a WebSocket streaming the repl's shell on a pty: a new shell, or with
// ?resume=<session>&offset=<n> one that exists (see resume).
func (s *Server) serveAttach(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !ValidID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid repl id %q", id), ErrorInvalid)
		return
	}
	q := r.URL.Query()
	if q.Has("resume") {
		s.serveResume(w, r, id)
		return
	}
	cols, err := parseSize(q.Get("cols"), 80)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	rows, err := parseSize(q.Get("rows"), 24)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	rp, err := s.ensure(r.Context(), id)
	switch {
	case errors.Is(err, ErrDraining):
		writeError(w, http.StatusServiceUnavailable, "conman is draining", ErrorDraining)
		return
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "repl cannot start here: "+err.Error(), ErrorStart)
		return
	}
	st, err := s.rt.Inspect(r.Context(), id)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "repl cannot start here: "+err.Error(), ErrorStart)
		return
	}
	shell := st.Spec.Shell
	if len(shell) == 0 {
		shell = []string{"/bin/sh"}
	}
	proc, err := s.rt.Exec(r.Context(), id, ExecOptions{
		Args: shell, TTY: true, Size: WindowSize{Cols: cols, Rows: rows},
	})
	if err != nil {
		// The container runs here: a shell that cannot start is the repl's own failure (its
		// pids limit, a broken shell), not this VM's. Another VM would not help.
		writeError(w, http.StatusBadGateway, "cannot start the repl's shell: "+err.Error(), ErrorRepl)
		return
	}
	if !s.enter() {
		proc.Close()
		writeError(w, http.StatusServiceUnavailable, "conman is draining", ErrorDraining)
		return
	}
	defer s.wg.Done()
	att := newAttachment()
	sh := s.newShell(rp, proc, att)
	conn, err := wsconn.Upgrade(w, r, http.Header{HeaderSession: {sh.id}}, maxMessage)
	if err != nil {
		sh.stop(CloseInternalError, "")
		return // Accept answered the client
	}
	s.connect(sh, att, conn)
}

// connect gives att its upgraded connection and runs it, unless a handoff took the shell to
// the successor during the handshake: then the peer is told to resume on the same VM (4001).
func (s *Server) connect(sh *shell, att *attachment, conn *wsconn.Conn) {
	sh.mu.Lock()
	moved := att.handedOff
	if !moved {
		att.conn = conn
		att.loops.Add(2)
	}
	sh.mu.Unlock()
	if !moved {
		s.attach(sh, att)
		return
	}
	_ = conn.Close(CloseResumeHere, "conman upgrade: resume the session on the same VM")
	for { // until the peer's answer or Close's read deadline
		if _, _, err := conn.Read(); err != nil {
			break
		}
	}
	_ = conn.CloseNow()
}

// maxMessage caps a message from the client of an attach (keystrokes, pastes, resizes).
// Attaches use our own WebSocket codec (internal/wsconn), not coder/websocket: it can hand a
// live connection to a successor between two frames (Handoff). It never compresses, so the
// session proxy may splice raw frames; the Origin is not checked: the credential authenticates
// the caller, and a browser's Origin relayed by a proxy says nothing about it.
const maxMessage = 1 << 20

// enter counts an attach handler in s.wg unless the server drains; the caller calls s.wg.Done.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining || s.closed {
		return false
	}
	s.wg.Add(1)
	return true
}

// serveResume re-attaches an existing shell session to a new WebSocket (see the package
// documentation: resume).
func (s *Server) serveResume(w http.ResponseWriter, r *http.Request, repl string) {
	q := r.URL.Query()
	off, err := strconv.ParseInt(q.Get("offset"), 10, 64)
	if err != nil || off < 0 {
		writeError(w, http.StatusBadRequest, "resume needs offset=<bytes received>, a non-negative integer", ErrorInvalid)
		return
	}
	sid := q.Get("resume")
	if !validSessionID(sid) {
		s.m.resumeRefused.WithLabelValues(ErrorSessionGone).Inc()
		writeError(w, http.StatusNotFound, errSessionGone.Error(), ErrorSessionGone)
		return
	}
	if !s.enter() {
		writeError(w, http.StatusServiceUnavailable, "conman is draining", ErrorDraining)
		return
	}
	defer s.wg.Done()
	att := newAttachment()
	sh, gap, err := s.resume(repl, sid, off, att)
	switch {
	case errors.Is(err, errOffset):
		s.m.resumeRefused.WithLabelValues("offset").Inc()
		writeError(w, http.StatusBadRequest, err.Error(), ErrorInvalid)
		return
	case err != nil:
		s.m.resumeRefused.WithLabelValues(ErrorSessionGone).Inc()
		writeError(w, http.StatusNotFound, err.Error(), ErrorSessionGone)
		return
	}
	hdr := http.Header{HeaderSession: {sh.id}}
	if gap > 0 {
		hdr.Set(HeaderResumeGap, strconv.FormatInt(gap, 10))
	}
	conn, err := wsconn.Upgrade(w, r, hdr, maxMessage)
	if err != nil {
		// The shell stays as it was before: detached, for the rest of a resume window.
		s.detach(sh, att)
		return
	}
	s.connect(sh, att, conn)
}

// closeSessions ends every shell session with code.
func (s *Server) closeSessions(code int, reason string) {
	s.mu.Lock()
	ss := make([]*shell, 0, len(s.shells))
	for _, x := range s.shells {
		ss = append(ss, x)
	}
	s.mu.Unlock()
	for _, x := range ss {
		x.stop(code, reason)
	}
}

// Shutdown drains the VM: it refuses new work (503), marks the VM draining in placement, closes
// attach sessions with 1012, stops every container (SIGTERM, StopGrace, SIGKILL), releases the
// repls in placement, removes the containers and waits for the server's goroutines. It returns
// ctx.Err() if ctx ends first (containers may then still be stopping).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.draining = true
	s.mu.Unlock()
	if s.cfg.Placement != nil {
		if err := s.cfg.Placement.SetState(ctx, s.cfg.VM.ID, placement.Draining); err != nil {
			s.log.Warn("conman: mark VM draining in placement", "vm", s.cfg.VM.ID, "err", err)
		}
	}
	s.closeSessions(CloseDraining, "conman is draining")

	s.mu.Lock()
	rs := make([]*repl, 0, len(s.repls))
	for _, r := range s.repls {
		r.stopping = true
		rs = append(rs, r)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case <-r.ready:
			case <-ctx.Done():
				return
			}
			if r.err != nil {
				return
			}
			if err := s.rt.Stop(ctx, r.id, s.cfg.StopGrace); err != nil {
				s.log.Warn("conman: stop container", "repl", r.id, "err", err)
				return
			}
			select {
			case <-r.exited:
			case <-ctx.Done():
				return
			}
			if s.cfg.Placement != nil {
				if err := s.cfg.Placement.Release(ctx, r.id, s.cfg.VM.ID); err != nil {
					s.log.Debug("conman: release repl in placement", "repl", r.id, "err", err)
				}
			}
		}()
	}
	wg.Wait()
	return s.finish(ctx)
}

// Close stops the server without stopping containers: attach sessions end with 1012, the
// agent stops heartbeating, and the containers keep running for the next Server over the same
// Runtime state to adopt. It waits for the server's goroutines.
func (s *Server) Close() error {
	s.mu.Lock()
	s.draining = true
	s.mu.Unlock()
	s.closeSessions(CloseDraining, "conman is restarting")
	return s.finish(context.Background())
}

func (s *Server) finish(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.tr.CloseIdleConnections()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var _ io.Closer = (*Server)(nil)
