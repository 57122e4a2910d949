package conman

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchyard-dev/switchyard/internal/wsconn"
)

// An upgrade in place: the running conman (Handoff) gives its successor on the same VM
// (ReceiveHandoff, then New with Config.Inherit) every shell — the descriptors that keep the
// process alive, its output ring and offset — and every live attach connection, stopped
// between two WebSocket frames with the bytes read but not consumed. The successor continues
// the same TCP connections: the peer sees a pause, not a close.
//
// The wire (a unix stream socket): records of a 5-byte header — the JSON length (big endian
// uint32) and the number of descriptors, which ride on the header (SCM_RIGHTS) — then the
// JSON. The successor asks first (takeover, with its version), so a stray connection stops
// nothing; the predecessor then sends hello, one shell record per shell, a files record (the
// caller's extra files, e.g. listeners), end; the successor answers ok once it holds everything.

const (
	handoffVersion   = 1
	maxHandoffRecord = 8 << 20
	maxHandoffFiles  = 8
	maxHandoffShells = 1 << 16
)

type handoffMsg struct {
	Kind    string        `json:"kind"` // takeover, hello, shell, files, end, ok
	Version int           `json:"version,omitempty"`
	Shell   *handoffShell `json:"shell,omitempty"`
	Files   int           `json:"files,omitempty"`
}

type handoffShell struct {
	ID       string `json:"id"`
	Repl     string `json:"repl"`
	Produced int64  `json:"produced"`
	// Output is the ring, oldest byte first, ending at Produced.
	Output []byte `json:"output"`
	// Left is what remains of a detached shell's resume window; zero for an attached one.
	Left      time.Duration `json:"left,omitempty"`
	Proc      []byte        `json:"proc"`
	ProcFiles int           `json:"proc_files"`
	Conn      *handoffConn  `json:"conn,omitempty"`
}

type handoffConn struct {
	Pos int64        `json:"pos"`
	WS  wsconn.State `json:"ws"`
}

// Inheritance is what ReceiveHandoff got from the predecessor. Pass it as Config.Inherit;
// New adopts its shells and connections. Files are the predecessor's extra files, in order
// (e.g. its listeners): the caller owns them.
type Inheritance struct {
	Files  []*os.File
	shells []inherited
}

type inherited struct {
	rec   handoffShell
	files []*os.File // the process's, then the connection's
}

// Close closes every descriptor New did not adopt (call it if New is not reached).
func (in *Inheritance) Close() {
	for _, sh := range in.shells {
		for _, f := range sh.files {
			f.Close()
		}
	}
	in.shells = nil
}

// checkPeer refuses a handoff peer that is neither root nor our own user.
func checkPeer(uc *net.UnixConn) error {
	rc, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("conman: handoff peer: %w", cerr)
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: conman: handoff peer uid %d", ErrInvalid, cred.Uid)
	}
	return nil
}

func rawFD(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := rc.Control(func(x uintptr) { fd = int(x) }); err != nil {
		return -1, err
	}
	return fd, nil
}

func sendRecord(uc *net.UnixConn, m handoffMsg, files []*os.File) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > maxHandoffRecord || len(files) > maxHandoffFiles {
		return fmt.Errorf("conman: handoff record too large (%d bytes, %d files)", len(b), len(files))
	}
	hdr := make([]byte, 5)
	binary.BigEndian.PutUint32(hdr, uint32(len(b)))
	hdr[4] = byte(len(files))
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			if fds[i], err = rawFD(f); err != nil {
				return err
			}
		}
		oob = syscall.UnixRights(fds...)
	}
	if _, _, err := uc.WriteMsgUnix(hdr, oob, nil); err != nil {
		return fmt.Errorf("conman: handoff: %w", err)
	}
	if _, err := uc.Write(b); err != nil {
		return fmt.Errorf("conman: handoff: %w", err)
	}
	return nil
}

func recvRecord(uc *net.UnixConn) (handoffMsg, []*os.File, error) {
	var m handoffMsg
	hdr := make([]byte, 5)
	oob := make([]byte, syscall.CmsgSpace(maxHandoffFiles*4))
	n, oobn, flags, _, err := uc.ReadMsgUnix(hdr, oob)
	var files []*os.File
	if oobn > 0 {
		msgs, perr := syscall.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, cm := range msgs {
				fds, _ := syscall.ParseUnixRights(&cm)
				for _, fd := range fds {
					syscall.CloseOnExec(fd)
					files = append(files, os.NewFile(uintptr(fd), "handoff"))
				}
			}
		}
	}
	fail := func(err error) (handoffMsg, []*os.File, error) {
		for _, f := range files {
			f.Close()
		}
		return m, nil, err
	}
	if err != nil {
		return fail(fmt.Errorf("conman: handoff: %w", err))
	}
	if flags&syscall.MSG_CTRUNC != 0 {
		return fail(fmt.Errorf("%w: conman: handoff: too many descriptors", ErrInvalid))
	}
	if n < len(hdr) {
		if _, err := io.ReadFull(uc, hdr[n:]); err != nil {
			return fail(fmt.Errorf("conman: handoff: %w", err))
		}
	}
	size := binary.BigEndian.Uint32(hdr)
	if size > maxHandoffRecord || int(hdr[4]) != len(files) {
		return fail(fmt.Errorf("%w: conman: handoff record of %d bytes with %d descriptors (header says %d)", ErrInvalid, size, len(files), hdr[4]))
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(uc, b); err != nil {
		return fail(fmt.Errorf("conman: handoff: %w", err))
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fail(fmt.Errorf("%w: conman: handoff record: %v", ErrInvalid, err))
	}
	return m, files, nil
}

// AcceptSuccessor waits for the successor's request at the other end of uc (a unix stream
// socket; the peer must be root or our own user) and checks it, before anything is stopped: a
// connection that is not a conman successor of this version gets an error and changes nothing.
// Call it first, then stop serving requests, then Handoff.
func AcceptSuccessor(ctx context.Context, uc *net.UnixConn) error {
	if err := checkPeer(uc); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	m, fs, err := recvRecord(uc)
	for _, f := range fs {
		f.Close()
	}
	if err != nil {
		return err
	}
	if m.Kind != "takeover" || m.Version != handoffVersion || len(fs) != 0 {
		return fmt.Errorf("%w: conman: not a successor of handoff version %d (%q version %d)", ErrInvalid, handoffVersion, m.Kind, m.Version)
	}
	return nil
}

// Handoff gives everything this Server runs to its successor at the other end of uc (a unix
// stream socket, accepted with AcceptSuccessor), plus files (e.g. the listeners; the caller
// keeps its copies): every shell with its output ring, and every live attach connection,
// stopped between two frames. Stop serving new requests first (close the listener after
// duplicating it for files). Once the successor holds everything, the Server
// lets go of its copies and closes like Close, leaving the containers running; shells it could
// not hand over (the runtime's processes are not Handoffers, or the process was exiting) are
// killed and their connections closed with 1012. If the successor fails before it answers,
// Handoff returns an error and every shell is killed as by Close. After a handoff the Server's
// metrics are unregistered from Config.Registerer, so a successor in the same process can
// register its own. ctx bounds it.
func (s *Server) Handoff(ctx context.Context, uc *net.UnixConn, files ...*os.File) error {
	if err := checkPeer(uc); err != nil {
		return err
	}
	s.mu.Lock()
	if s.draining || s.closed {
		s.mu.Unlock()
		return ErrDraining
	}
	s.draining = true // no new attach, resume or start; not reported to placement
	shells := make([]*shell, 0, len(s.shells))
	for _, sh := range s.shells {
		shells = append(shells, sh)
	}
	s.mu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var handed []frozenShell
	var toClose []*os.File
	defer func() {
		for _, f := range toClose {
			f.Close()
		}
	}()
	err := func() error {
		if err := sendRecord(uc, handoffMsg{Kind: "hello", Version: handoffVersion}, nil); err != nil {
			return err
		}
		for _, sh := range shells {
			rec, fs, fz, err := s.freeze(ctx, sh)
			if err != nil {
				s.log.Warn("conman: shell not handed over", "repl", sh.repl.id, "err", err)
				continue
			}
			toClose = append(toClose, fs...)
			handed = append(handed, fz)
			if err := sendRecord(uc, handoffMsg{Kind: "shell", Shell: rec}, fs); err != nil {
				return err
			}
		}
		if err := sendRecord(uc, handoffMsg{Kind: "files", Files: len(files)}, files); err != nil {
			return err
		}
		if err := sendRecord(uc, handoffMsg{Kind: "end"}, nil); err != nil {
			return err
		}
		m, fs, err := recvRecord(uc)
		for _, f := range fs {
			f.Close()
		}
		if err != nil {
			return err
		}
		if m.Kind != "ok" {
			return fmt.Errorf("%w: conman: handoff: successor answered %q", ErrInvalid, m.Kind)
		}
		return nil
	}()
	conns := 0
	for _, fz := range handed {
		switch {
		case fz.att == nil:
		case err != nil: // the successor failed: close as a restart does
			fz.att.conn.Resume()
			fz.att.end(endShell, CloseDraining, "conman restarting")
		default:
			fz.att.end(endHandoff, -1, "")
			conns++
		}
		// Our copies: after a handoff the successor's keep the process alive; after a failure
		// this kills the shell, as a restart does.
		fz.sh.proc.Close()
	}
	cerr := s.Close()
	if err == nil {
		// A successor in the same process registers the same metrics.
		s.m.unregister()
		s.log.Info("conman: handed over to the successor", "shells", len(handed), "connections", conns)
	}
	return errors.Join(err, cerr)
}

// frozenShell is a shell whose process Handoff gave away, and its detached connection (nil: none,
// or one that could not be detached and was cut).
type frozenShell struct {
	sh  *shell
	att *attachment
}

// freeze stops sh and its attach connection (if any) for a handoff and returns its record and
// descriptors (the process's, then the connection's).
func (s *Server) freeze(ctx context.Context, sh *shell) (*handoffShell, []*os.File, frozenShell, error) {
	ho, ok := sh.proc.(Handoffer)
	if !ok {
		return nil, nil, frozenShell{}, fmt.Errorf("the runtime's processes cannot be handed off (%T)", sh.proc)
	}
	sh.mu.Lock()
	if sh.ended || sh.killed() {
		sh.mu.Unlock()
		return nil, nil, frozenShell{}, errors.New("shell ending")
	}
	if sh.att != nil && sh.att.conn == nil {
		// A connection in its handshake: the shell goes over detached, and the connection,
		// once upgraded, is told to resume it there (connect).
		sh.att.handedOff = true
		sh.att = nil
		sh.detached = true
		sh.deadline = time.Now().Add(max(s.cfg.ResumeWindow, time.Second))
	}
	att := sh.att
	if att != nil {
		att.frozen = true
	}
	sh.broadcast()
	sh.mu.Unlock()
	if att != nil {
		// Stop the reader between two frames and wait for both loops (a write in progress to
		// a peer that does not read is given two seconds).
		_ = att.conn.SetReadDeadline(time.Now())
		done := make(chan struct{})
		go func() { att.loops.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
		}
	}
	sh.mu.Lock()
	sh.handoff = true // the pump stops at its next wait or read deadline
	sh.broadcast()
	sh.mu.Unlock()
	ph, err := ho.Handoff()
	if err != nil {
		// Not handed over: the shell ends here, as in a restart.
		sh.stop(CloseDraining, "conman restarting")
		select {
		case <-sh.done:
		case <-ctx.Done():
		}
		sh.proc.Close()
		if att != nil {
			att.end(endShell, CloseDraining, "conman restarting")
		}
		return nil, nil, frozenShell{}, err
	}
	select {
	case <-sh.done: // the pump stopped: the ring is complete
	case <-ctx.Done():
		for _, f := range ph.Files {
			f.Close()
		}
		sh.proc.Close()
		if att != nil {
			att.end(endShell, CloseDraining, "conman restarting")
		}
		return nil, nil, frozenShell{}, ctx.Err()
	}
	sh.mu.Lock()
	rec := &handoffShell{ID: sh.id, Repl: sh.repl.id, Produced: sh.out.produced, Output: sh.out.snapshot(),
		Proc: ph.State, ProcFiles: len(ph.Files)}
	if sh.detached && sh.deadline.After(time.Now()) {
		rec.Left = time.Until(sh.deadline)
	}
	var pos int64
	if att != nil {
		pos = att.pos
	}
	sh.mu.Unlock()
	files := ph.Files
	if att != nil {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, f, err := att.conn.Detach(dctx)
		cancel()
		if err != nil {
			// The connection is not at a frame boundary: it is cut when we let go of it, and
			// the peer resumes the session by id.
			s.log.Warn("conman: attach connection not handed over", "repl", sh.repl.id, "err", err)
			att.end(endHandoff, -1, "")
			return rec, files, frozenShell{sh: sh}, nil
		}
		rec.Conn = &handoffConn{Pos: pos, WS: st}
		files = append(files, f)
	}
	return rec, files, frozenShell{sh: sh, att: att}, nil
}

// ReceiveHandoff takes over from the Server at the other end of uc (its Handoff): it reads and
// validates everything, answers ok, and returns what New adopts with Config.Inherit. The
// peer must be root or our own user; ctx bounds it.
func ReceiveHandoff(ctx context.Context, uc *net.UnixConn) (*Inheritance, error) {
	if err := checkPeer(uc); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	in := &Inheritance{}
	if err := sendRecord(uc, handoffMsg{Kind: "takeover", Version: handoffVersion}, nil); err != nil {
		return nil, err
	}
	fail := func(err error) (*Inheritance, error) {
		in.Close()
		for _, f := range in.Files {
			f.Close()
		}
		return nil, err
	}
	m, fs, err := recvRecord(uc)
	if err != nil {
		return fail(err)
	}
	if m.Kind != "hello" || m.Version != handoffVersion || len(fs) != 0 {
		for _, f := range fs {
			f.Close()
		}
		return fail(fmt.Errorf("%w: conman: handoff: expected hello version %d, got %q version %d", ErrInvalid, handoffVersion, m.Kind, m.Version))
	}
	seen := make(map[string]bool)
	for {
		m, fs, err := recvRecord(uc)
		if err != nil {
			return fail(err)
		}
		switch m.Kind {
		case "shell":
			if err := validShellRecord(m.Shell, len(fs)); err != nil || seen[m.Shell.ID] || len(in.shells) >= maxHandoffShells {
				for _, f := range fs {
					f.Close()
				}
				if err == nil {
					err = fmt.Errorf("%w: conman: handoff: duplicate session or too many shells", ErrInvalid)
				}
				return fail(err)
			}
			seen[m.Shell.ID] = true
			in.shells = append(in.shells, inherited{rec: *m.Shell, files: fs})
		case "files":
			if m.Files != len(fs) || in.Files != nil {
				for _, f := range fs {
					f.Close()
				}
				return fail(fmt.Errorf("%w: conman: handoff: files record", ErrInvalid))
			}
			in.Files = fs
		case "end":
			if len(fs) != 0 {
				for _, f := range fs {
					f.Close()
				}
				return fail(fmt.Errorf("%w: conman: handoff: descriptors on end", ErrInvalid))
			}
			if err := sendRecord(uc, handoffMsg{Kind: "ok"}, nil); err != nil {
				return fail(err)
			}
			return in, nil
		default:
			for _, f := range fs {
				f.Close()
			}
			return fail(fmt.Errorf("%w: conman: handoff: unexpected record %q", ErrInvalid, m.Kind))
		}
	}
}

func validShellRecord(r *handoffShell, nfiles int) error {
	bad := func(what string) error { return fmt.Errorf("%w: conman: handoff shell record: %s", ErrInvalid, what) }
	switch {
	case r == nil:
		return bad("missing")
	case !validSessionID(r.ID):
		return bad("session id")
	case !ValidID(r.Repl):
		return bad("repl id")
	case r.Produced < 0 || int64(len(r.Output)) > r.Produced:
		return bad("output offsets")
	case r.ProcFiles < 0 || r.ProcFiles > maxHandoffFiles-1:
		return bad("process files")
	case r.Left < 0:
		return bad("resume window")
	}
	want := r.ProcFiles
	if c := r.Conn; c != nil {
		want++
		switch {
		case c.Pos > r.Produced || c.Pos < r.Produced-int64(len(r.Output)):
			return bad("connection offset outside the output held")
		case c.WS.MsgOp != 0 && c.WS.MsgOp != wsconn.Text && c.WS.MsgOp != wsconn.Binary:
			return bad("message type")
		case len(c.WS.Msg) > maxMessage || len(c.WS.Pending) > maxMessage+14:
			return bad("connection buffers")
		}
	}
	if nfiles != want {
		return bad(fmt.Sprintf("%d descriptors, want %d", nfiles, want))
	}
	return nil
}

// inherit adopts the shells and connections of cfg.Inherit (New, after adopting containers).
func (s *Server) inherit(ctx context.Context, in *Inheritance) {
	ad, canAdopt := s.rt.(Adopter)
	for _, ih := range in.shells {
		rec := ih.rec
		procFiles, connFiles := ih.files[:rec.ProcFiles], ih.files[rec.ProcFiles:]
		closeConn := func() {
			for _, f := range connFiles {
				f.Close()
			}
		}
		s.mu.Lock()
		rp := s.repls[rec.Repl]
		s.mu.Unlock()
		if rp == nil || !canAdopt {
			for _, f := range procFiles {
				f.Close()
			}
			closeConn()
			s.log.Warn("conman: inherited shell dropped", "repl", rec.Repl, "runtime_adopts", canAdopt)
			continue
		}
		proc, err := ad.AdoptProcess(ctx, rec.Repl, ProcessHandoff{Files: procFiles, State: rec.Proc})
		if err != nil {
			closeConn()
			s.log.Warn("conman: inherited shell not adopted", "repl", rec.Repl, "err", err)
			continue
		}
		out := newRing(s.cfg.OutputBuffer + min(outputChunk, s.cfg.OutputBuffer))
		out.produced = rec.Produced - int64(len(rec.Output))
		out.write(rec.Output)
		sh := s.makeShell(rec.ID, rp, proc, out)
		var att *attachment
		if rec.Conn != nil {
			nc, err := net.FileConn(connFiles[0])
			connFiles[0].Close()
			if _, tcp := nc.(*net.TCPConn); err == nil && !tcp {
				nc.Close()
				err = fmt.Errorf("%w: not a TCP connection", ErrInvalid)
			}
			if err != nil {
				s.log.Warn("conman: inherited connection dropped; the shell waits for a resume", "repl", rec.Repl, "err", err)
			} else {
				att = newAttachment()
				att.conn = wsconn.Adopt(nc, rec.Conn.WS, maxMessage)
				att.loops.Add(2) // before the shell is visible to a handoff (see attach)
				// Where the predecessor's connection was (validated to be in the ring): the ring
				// holds keep+chunk bytes, and the predecessor's pump may have read its last chunk
				// past the keep its backpressure allows while the handoff stopped it. Clamping to
				// produced-keep here lost up to a chunk of output (TestHandoffMidStream, 1 run in
				// ~40); only a successor with a smaller ring can have dropped the oldest bytes.
				att.pos = max(rec.Conn.Pos, out.oldest())
				sh.att = att
			}
		}
		if att == nil {
			left := rec.Left
			if left <= 0 || left > s.cfg.ResumeWindow {
				left = s.cfg.ResumeWindow
			}
			if s.cfg.ResumeWindow < 0 {
				left = 0
			}
			sh.detached = true
			sh.deadline = time.Now().Add(left)
			gen := sh.gen
			sh.timer = time.AfterFunc(left, func() { s.expire(sh, gen) })
			s.m.detachedNow.Inc()
		}
		s.startShell(sh)
		if att != nil {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.attach(sh, att)
			}()
		}
	}
	in.shells = nil
}
