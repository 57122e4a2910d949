package sessions

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/placement"
)

// backendLeg is an attached conman leg: *rawBackend in Splice mode,
// *websocket.Conn in Frame mode.
type backendLeg interface {
	closeNow()
}

// rawBackend is conman's side of a spliced session after the handshake.
type rawBackend struct {
	conn    net.Conn
	pending []byte // bytes the handshake reader read past the 101 response
}

func (b *rawBackend) closeNow() { _ = b.conn.Close() }

type frameBackend struct {
	c    *websocket.Conn
	raw  net.Conn      // under c, to cut a close handshake short
	body *upgradedBody // c's connection as it writes to it

	vm, addr string // where it is attached
	session  string // conman's shell session (conman.HeaderSession), to resume it; may be empty
	lost     int64  // on a resume: bytes of output conman could no longer replay
}

func (b *frameBackend) closeNow() { _ = b.c.CloseNow() }

// AttachError is a conman attach that did not upgrade: the status conman answered and the
// error message from its JSON body.
type AttachError struct {
	VM      string
	Status  int
	Message string
	// Code is conman's Switchyard-Error on the answer: why conman itself refused ("draining",
	// "start-failed", "repl-failed"), or empty for a status from anything else.
	Code string
}

// credential is what to present to conman on vm.
func (s *Proxy) credential(vm string) string {
	if s.cfg.VMCredential != nil {
		if c := s.cfg.VMCredential(vm); !strings.ContainsAny(c, "\r\n") {
			return c
		}
		return "" // never a header injection; conman answers 401
	}
	return s.cfg.Credential
}

func (e *AttachError) Error() string {
	return fmt.Sprintf("sessions: conman on VM %s answered %d: %s", e.VM, e.Status, e.Message)
}

const wSGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + wSGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

func validKey(key string) bool {
	b, err := base64.StdEncoding.DecodeString(key)
	return err == nil && len(b) == 16
}

// attachURL builds conman's attach URL for a repl, passing the client's terminal size.
func attachURL(addr, repl string, q url.Values) (*url.URL, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("conman address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "http"
	case "https", "wss":
		u.Scheme = "https"
	default:
		return nil, fmt.Errorf("conman address %q: scheme must be http or https", addr)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("conman address %q: no host", addr)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/repls/" + url.PathEscape(repl) + "/attach"
	u.RawPath = ""
	out := url.Values{}
	for _, k := range []string{"cols", "rows"} {
		if v := q.Get(k); v != "" {
			if n, err := strconv.Atoi(v); err == nil && n > 0 && n <= 65535 {
				out.Set(k, strconv.Itoa(n))
			}
		}
	}
	u.RawQuery = out.Encode()
	return u, nil
}

// attachOpts shape one attach attempt.
type attachOpts struct {
	frame  bool   // terminate WebSocket on conman's leg (Frame mode, SubprotocolV2)
	resume string // resume this conman shell session instead of starting a shell
	offset int64  // with resume: the bytes of output the client already has
}

// attach dials conman for one attempt, bounded by AttachTimeout.
func (s *Proxy) attach(ctx context.Context, q url.Values, asg placement.Assignment, ao attachOpts) (backendLeg, error) {
	u, err := attachURL(asg.Addr, asg.Repl, q)
	if err != nil {
		return nil, err
	}
	if ao.resume != "" {
		v := u.Query()
		v.Set("resume", ao.resume)
		v.Set("offset", strconv.FormatInt(ao.offset, 10))
		u.RawQuery = v.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.AttachTimeout)
	defer cancel()
	if ao.frame {
		h := http.Header{}
		if cred := s.credential(asg.VM); cred != "" {
			h.Set(conman.HeaderCredential, cred)
		}
		slot := &dialSlot{vm: asg.VM}
		c, resp, err := websocket.Dial(context.WithValue(ctx, dialKey{}, slot), u.String(), &websocket.DialOptions{
			HTTPClient: s.wsHTTP,
			HTTPHeader: h,
		})
		if err != nil {
			if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
				return nil, &AttachError{VM: asg.VM, Status: resp.StatusCode, Message: errorBody(resp), Code: resp.Header.Get(conman.HeaderError)}
			}
			return nil, fmt.Errorf("attach to VM %s: %w", asg.VM, err)
		}
		c.SetReadLimit(s.cfg.MaxMessageBytes)
		fb := &frameBackend{c: c, raw: slot.conn, body: slot.body, vm: asg.VM, addr: asg.Addr}
		if resp != nil {
			if id := resp.Header.Get(conman.HeaderSession); validSessionID(id) {
				fb.session = id
			}
			if n, err := strconv.ParseInt(resp.Header.Get(conman.HeaderResumeGap), 10, 64); err == nil && n > 0 {
				fb.lost = n
			}
		}
		return fb, nil
	}
	return s.attachRaw(ctx, u, asg.VM)
}

// validSessionID accepts what conman may name a session: 16 to 128 URL-safe characters. Anything
// else is not kept, so it never reaches a query string.
func validSessionID(id string) bool {
	if len(id) < 16 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func errorBody(resp *http.Response) string {
	if resp.Body == nil {
		return http.StatusText(resp.StatusCode)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	var e struct {
		Error string `json:"error"`
	}
	if jerr := json.Unmarshal(b, &e); jerr == nil && e.Error != "" {
		return e.Error
	}
	if s := strings.TrimSpace(string(b)); s != "" {
		return s
	}
	return http.StatusText(resp.StatusCode)
}

// attachRaw performs the client side of the WebSocket opening handshake itself over a plain
// connection, so the relay can splice the *net.TCPConn afterwards. Bytes conman sent right after
// its 101 response stay in pending.
func (s *Proxy) attachRaw(ctx context.Context, u *url.URL, vm string) (*rawBackend, error) {
	var kb [16]byte
	_, _ = rand.Read(kb[:])
	key := base64.StdEncoding.EncodeToString(kb[:])
	var req strings.Builder
	req.Grow(256)
	req.WriteString("GET ")
	req.WriteString(u.RequestURI())
	req.WriteString(" HTTP/1.1\r\nHost: ")
	req.WriteString(u.Host)
	req.WriteString("\r\nUser-Agent: switchyard-sessions\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ")
	req.WriteString(key)
	if cred := s.credential(vm); cred != "" {
		req.WriteString("\r\n" + conman.HeaderCredential + ": ")
		req.WriteString(cred)
	}
	req.WriteString("\r\n\r\n")
	conn, resp, pending, err := s.upgrade(ctx, u, vm, func(c io.Writer) error {
		_, err := io.WriteString(c, req.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*rawBackend, error) {
		_ = conn.Close()
		return nil, err
	}
	if !headerHasToken(resp.Header, "Upgrade", "websocket") ||
		!headerHasToken(resp.Header, "Connection", "upgrade") {
		return fail(fmt.Errorf("attach to VM %s: 101 response without WebSocket upgrade headers", vm))
	}
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != acceptKey(key) {
		return fail(fmt.Errorf("attach to VM %s: bad Sec-WebSocket-Accept %q", vm, got))
	}
	if ext := resp.Header.Get("Sec-WebSocket-Extensions"); ext != "" {
		return fail(fmt.Errorf("attach to VM %s: unrequested extension %q", vm, ext))
	}
	return &rawBackend{conn: conn, pending: pending}, nil
}

// upgrade dials conman (TLS for https), writes the upgrade request and reads the response. It
// returns the connection only with a 101; any other status is an *AttachError. pending holds
// the bytes read past the response.
func (s *Proxy) upgrade(ctx context.Context, u *url.URL, vm string, write func(io.Writer) error) (net.Conn, *http.Response, []byte, error) {
	host := u.Host
	if u.Port() == "" {
		if u.Scheme == "https" {
			host = net.JoinHostPort(u.Hostname(), "443")
		} else {
			host = net.JoinHostPort(u.Hostname(), "80")
		}
	}
	dctx, dcancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer dcancel()
	conn, err := s.dial(dctx, "tcp", host)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("attach to VM %s: %w", vm, err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close()
		}
	}()
	if dl, has := ctx.Deadline(); has {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if u.Scheme == "https" {
		cfg := s.cfg.BackendTLS.Clone()
		if cfg == nil {
			cfg = &tls.Config{}
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			return nil, nil, nil, fmt.Errorf("attach to VM %s: tls: %w", vm, err)
		}
		conn = tc
	}
	if err := write(conn); err != nil {
		return nil, nil, nil, fmt.Errorf("attach to VM %s: %w", vm, ctxErr(ctx, err))
	}
	br := bufio.NewReaderSize(conn, 2048)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("attach to VM %s: reading response: %w", vm, ctxErr(ctx, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, nil, nil, &AttachError{VM: vm, Status: resp.StatusCode, Message: errorBody(resp), Code: resp.Header.Get(conman.HeaderError)}
	}
	var pending []byte
	if n := br.Buffered(); n > 0 {
		p, _ := br.Peek(n)
		pending = append([]byte(nil), p...)
	}
	if !stop() {
		return nil, nil, nil, fmt.Errorf("attach to VM %s: %w", vm, ctx.Err())
	}
	_ = conn.SetDeadline(time.Time{})
	ok = true
	return conn, resp, pending, nil
}

// upgradeTransport is the http.RoundTripper Frame mode gives coder/websocket.Dial: it
// performs the upgrade on a connection of its own and returns the connection itself as the
// response body, so the backend leg carries coder/websocket's buffers only (http.Transport would
// keep its own 8 KiB of bufio buffers alive under the upgraded body).
type upgradeTransport struct{ s *Proxy }

// dialKey carries a *dialSlot through coder/websocket.Dial to the transport.
type dialKey struct{}

type dialSlot struct {
	vm   string
	conn net.Conn
	body *upgradedBody
}

func (t *upgradeTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	slot, _ := req.Context().Value(dialKey{}).(*dialSlot)
	if slot == nil {
		slot = &dialSlot{}
	}
	conn, resp, pending, err := t.s.upgrade(req.Context(), req.URL, slot.vm, req.Write)
	if err != nil {
		var ae *AttachError
		if errors.As(err, &ae) {
			return &http.Response{StatusCode: ae.Status, Status: strconv.Itoa(ae.Status), Header: http.Header{},
				Body: io.NopCloser(strings.NewReader(`{"error":` + strconv.Quote(ae.Message) + `}`)), Request: req}, nil
		}
		return nil, err
	}
	slot.conn = conn
	slot.body = &upgradedBody{Conn: conn, pending: pending}
	resp.Body = slot.body
	resp.Request = req
	return resp, nil
}

// upgradedBody is an upgraded connection as a response body (io.ReadWriteCloser),
// replaying first the bytes read past the 101.
//
// It also coalesces writes on request. coder/websocket masks what a client sends through its
// 4 KiB bufio.Writer, so a big message reaches the connection in 4 KiB writes: 256 syscalls
// and TCP segments per MiB. Between beginBatch and endBatch, writes collect in a pooled 64 KiB
// buffer instead and go out 64 KiB at a time. Frame mode opens a batch around each big message
// it relays to conman; an idle session holds no batch buffer.
type upgradedBody struct {
	net.Conn
	pending []byte

	mu    sync.Mutex // serializes Write with beginBatch and endBatch
	batch *[]byte    // while a batch is open: the bytes written and not yet sent
	err   error      // a write error inside the batch, reported by endBatch
}

var batchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 64<<10)
	return &b
}}

func (b *upgradedBody) Read(p []byte) (int, error) {
	if len(b.pending) > 0 {
		n := copy(p, b.pending)
		b.pending = b.pending[n:]
		return n, nil
	}
	return b.Conn.Read(p)
}

func (b *upgradedBody) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batch == nil {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	buf := *b.batch
	if len(buf)+len(p) > cap(buf) {
		if err := b.sendLocked(); err != nil {
			return 0, err
		}
		if len(p) >= cap(buf) {
			n, err := b.Conn.Write(p)
			b.err = err
			return n, err
		}
		buf = *b.batch
	}
	*b.batch = append(buf, p...)
	return len(p), nil
}

// sendLocked writes out what the batch holds.
func (b *upgradedBody) sendLocked() error {
	if len(*b.batch) == 0 {
		return nil
	}
	_, err := b.Conn.Write(*b.batch)
	*b.batch = (*b.batch)[:0]
	if err != nil {
		b.err = err
	}
	return err
}

// beginBatch starts collecting writes.
func (b *upgradedBody) beginBatch() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batch == nil {
		b.batch = batchPool.Get().(*[]byte)
		b.err = nil
	}
}

// endBatch sends what the batch collected, stops collecting, and reports the first write error
// inside the batch.
func (b *upgradedBody) endBatch() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.batch == nil {
		return nil
	}
	err := b.err
	if err == nil {
		err = b.sendLocked()
	}
	*b.batch = (*b.batch)[:0]
	batchPool.Put(b.batch)
	b.batch, b.err = nil, nil
	return err
}

// ctxErr prefers the context's error over the timeout its deadline caused.
func ctxErr(ctx context.Context, err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() && ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}
