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
	"time"

	"github.com/coder/websocket"

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

// serveAttach upgrades to a WebSocket streaming the repl's shell on a pty.
func (s *Server) serveAttach(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !ValidID(id) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid repl id %q", id), ErrorInvalid)
		return
	}
	cols, err := parseSize(r.URL.Query().Get("cols"), 80)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error(), "")
		return
	}
	rows, err := parseSize(r.URL.Query().Get("rows"), 24)
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
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		CompressionMode: websocket.CompressionDisabled, // the session proxy may splice raw frames
		// The caller is authenticated by the credential; a browser's Origin relayed by a proxy
		// says nothing about it.
		InsecureSkipVerify: true,
	})
	if err != nil {
		proc.Close()
		return // Accept answered the client
	}
	sess := &session{conn: conn, proc: proc, repl: rp, closing: make(chan struct{})}
	s.mu.Lock()
	if s.draining || s.closed {
		s.mu.Unlock()
		proc.Close()
		conn.Close(CloseDraining, "conman is draining")
		return
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.m.sessions.Inc()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
		s.m.sessions.Dec()
		s.wg.Done()
	}()
	sess.run(s)
}

// session is one attach: a WebSocket spliced to a shell on a pty.
type session struct {
	conn *websocket.Conn
	proc Process
	repl *repl

	once    sync.Once
	code    websocket.StatusCode
	reason  string
	closing chan struct{}
}

// end records why the session ends (the first reason wins) and wakes its loops.
func (ss *session) end(code websocket.StatusCode, reason string) {
	ss.once.Do(func() {
		ss.code, ss.reason = code, reason
		close(ss.closing)
	})
}

func (ss *session) run(s *Server) {
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	ss.conn.SetReadLimit(1 << 20)
	var wg sync.WaitGroup
	wg.Add(2)
	// pty → client
	go func() {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		out := ss.proc.Stdout()
		for {
			n, err := out.Read(buf)
			if n > 0 {
				if werr := ss.conn.Write(ctx, websocket.MessageBinary, buf[:n]); werr != nil {
					ss.end(CloseInternalError, "write to client failed")
					return
				}
			}
			if err != nil {
				wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
				code, werr := ss.proc.Wait(wctx)
				wcancel()
				s.mu.Lock()
				stopped := ss.repl.stopping
				s.mu.Unlock()
				switch {
				case stopped:
					// conman stopped the repl here (it moved, or a proxy fenced it): not the
					// shell's own end. 1012 tells the client to reconnect.
					ss.end(CloseDraining, "the repl was stopped on this VM: reconnect")
				case werr != nil:
					ss.end(CloseShellExited, "shell ended (container exited)")
				default:
					ss.end(CloseShellExited, fmt.Sprintf("shell exited with code %d", code))
				}
				return
			}
		}
	}()
	// client → pty
	go func() {
		defer wg.Done()
		in := ss.proc.Stdin()
		for {
			typ, data, err := ss.conn.Read(ctx)
			if err != nil {
				ss.end(-1, "") // the client closed or went away
				return
			}
			if typ == websocket.MessageBinary {
				if _, err := in.Write(data); err != nil {
					ss.end(CloseShellExited, "shell input closed")
					return
				}
				continue
			}
			size, ok, err := ParseControl(data)
			if err != nil {
				ss.end(websocket.StatusInvalidFramePayloadData, err.Error())
				return
			}
			if ok {
				_ = ss.proc.Resize(size)
			}
		}
	}()
	select {
	case <-ss.closing:
	case <-ss.repl.exited:
		ss.end(CloseShellExited, "repl container exited")
	}
	if ss.code >= 0 {
		_ = ss.conn.Close(ss.code, ss.reason)
	}
	cancel()
	ss.proc.Close()
	_ = ss.conn.CloseNow()
	wg.Wait()
}

// closeSessions ends every attach session with code.
func (s *Server) closeSessions(code websocket.StatusCode, reason string) {
	s.mu.Lock()
	ss := make([]*session, 0, len(s.sessions))
	for x := range s.sessions {
		ss = append(ss, x)
	}
	s.mu.Unlock()
	for _, x := range ss {
		x.end(code, reason)
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
