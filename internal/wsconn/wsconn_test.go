package wsconn

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// server runs handle on every upgraded connection.
func server(t *testing.T, handle func(*Conn)) string {
	t.Helper()
	done := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := Upgrade(w, r, http.Header{"X-Test": {"1"}}, 1<<16)
		if err != nil {
			return
		}
		defer c.CloseNow()
		handle(c)
	}))
	t.Cleanup(func() {
		ts.CloseClientConnections()
		ts.Close()
		close(done)
	})
	return "ws" + strings.TrimPrefix(ts.URL, "http")
}

// echo echoes messages until an error, and returns it.
func echo(c *Conn) error {
	for {
		typ, b, err := c.Read()
		if err != nil {
			return err
		}
		if err := c.Write(context.Background(), typ, b); err != nil {
			return err
		}
	}
}

func TestEchoWithCoderClient(t *testing.T) {
	errs := make(chan error, 1)
	u := server(t, func(c *Conn) { errs <- echo(c) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, u, nil)
	require.NoError(t, err)
	require.Equal(t, "1", resp.Header.Get("X-Test"))
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for _, n := range []int{0, 1, 125, 126, 65535, 65536} {
		msg := bytes.Repeat([]byte{byte(n)}, n)
		require.NoError(t, c.Write(ctx, websocket.MessageBinary, msg))
		typ, got, err := c.Read(ctx)
		require.NoError(t, err)
		require.Equal(t, websocket.MessageBinary, typ)
		require.Equal(t, msg, got, "size %d", n)
	}
	// Fragmented text.
	w, err := c.Writer(ctx, websocket.MessageText)
	require.NoError(t, err)
	for i := range 3 {
		_, err := fmt.Fprintf(w, "part%d ", i)
		require.NoError(t, err) // each Write is a frame of its own
	}
	require.NoError(t, w.Close())
	typ, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, websocket.MessageText, typ)
	require.Equal(t, "part0 part1 part2 ", string(got))
	// Too big: 1009. The server closes as soon as it has read the header, so the client may
	// still be writing the payload and see a broken pipe instead of the close frame; the
	// server's verdict is what is under test.
	if err := c.Write(ctx, websocket.MessageBinary, make([]byte, 1<<16+1)); err == nil {
		_, _, err = c.Read(ctx)
		require.Equal(t, websocket.StatusMessageTooBig, websocket.CloseStatus(err))
	}
	var pe *ProtocolError
	require.ErrorAs(t, <-errs, &pe)
	require.Equal(t, 1009, pe.Code)
}

func TestCleanClose(t *testing.T) {
	errs := make(chan error, 1)
	u := server(t, func(c *Conn) { errs <- echo(c) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, u, nil)
	require.NoError(t, err)
	require.NoError(t, c.Close(4321, "bye"))
	var ce *CloseError
	require.ErrorAs(t, <-errs, &ce)
	require.Equal(t, 4321, ce.Code)
	require.Equal(t, "bye", ce.Reason)
}

// rawDial does the handshake by hand and returns the connection.
func rawDial(t *testing.T, u string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(u, "ws://"))
	require.NoError(t, err)
	t.Cleanup(func() { nc.Close() })
	fmt.Fprintf(nc, "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	b := make([]byte, 0, 512)
	one := make([]byte, 1)
	for !bytes.HasSuffix(b, []byte("\r\n\r\n")) {
		_, err := nc.Read(one)
		require.NoError(t, err)
		b = append(b, one[0])
	}
	require.Contains(t, string(b), "101 Switching Protocols")
	require.Contains(t, string(b), "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
	return nc
}

func frame(fin bool, op byte, mask bool, payload []byte) []byte {
	b := []byte{op, byte(len(payload))}
	if fin {
		b[0] |= 0x80
	}
	if !mask {
		return append(b, payload...)
	}
	b[1] |= 0x80
	key := []byte{1, 2, 3, 4}
	b = append(b, key...)
	for i, c := range payload {
		b = append(b, c^key[i&3])
	}
	return b
}

// readClose reads the server's frames until a close frame and returns its code.
func readClose(t *testing.T, nc net.Conn) int {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	all, _ := io.ReadAll(nc)
	for len(all) >= 2 {
		op, n := all[0]&0x0f, int(all[1]&0x7f)
		if op == opClose && n >= 2 {
			return int(binary.BigEndian.Uint16(all[2:]))
		}
		all = all[2+n:]
	}
	t.Fatalf("no close frame")
	return 0
}

func TestPingPong(t *testing.T) {
	u := server(t, func(c *Conn) { _ = echo(c) })
	nc := rawDial(t, u)
	_, err := nc.Write(frame(true, opPing, true, []byte("hi")))
	require.NoError(t, err)
	b := make([]byte, 4)
	_, err = io.ReadFull(nc, b)
	require.NoError(t, err)
	require.Equal(t, []byte{0x80 | opPong, 2, 'h', 'i'}, b)
}

func TestProtocolViolations(t *testing.T) {
	tests := []struct {
		name  string
		bytes []byte
		code  int
	}{
		{"unmasked", frame(true, Binary, false, []byte("x")), CloseProtocolError},
		{"reserved bit", append([]byte{0xc2}, frame(true, 0, true, []byte("x"))[1:]...), CloseProtocolError},
		{"unknown opcode", frame(true, 3, true, nil), CloseProtocolError},
		{"fragmented ping", frame(false, opPing, true, nil), CloseProtocolError},
		{"lone continuation", frame(true, opCont, true, []byte("x")), CloseProtocolError},
		{"message inside message", append(frame(false, Text, true, []byte("a")), frame(true, Text, true, []byte("b"))...), CloseProtocolError},
		{"bad utf-8", frame(true, Text, true, []byte{0xff, 0xfe}), CloseInvalidPayload},
		{"one-byte close", frame(true, opClose, true, []byte{3}), CloseProtocolError},
		{"huge length", []byte{0x82, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, CloseTooBig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := make(chan error, 1)
			u := server(t, func(c *Conn) { errs <- echo(c) })
			nc := rawDial(t, u)
			_, err := nc.Write(tt.bytes)
			require.NoError(t, err)
			require.Equal(t, tt.code, readClose(t, nc))
			var pe *ProtocolError
			require.ErrorAs(t, <-errs, &pe)
		})
	}
}

// TestDetachAdoptMidStream hands a connection from one Conn to another (through a duplicated
// descriptor, as between processes) while the client keeps sending, with a frame split across
// the handoff: nothing is lost, repeated or reordered.
func TestDetachAdoptMidStream(t *testing.T) {
	got := make(chan string, 100)
	u := server(t, func(c *Conn) {
		_, b, err := c.Read()
		if err != nil {
			return
		}
		got <- string(b)
		// The second message arrives in two writes; stop after its first half.
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, _, err = c.Read()
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			got <- "unexpected: " + fmt.Sprint(err)
			return
		}
		st, f, err := c.Detach(context.Background())
		if err != nil {
			got <- "detach: " + err.Error()
			return
		}
		c.CloseNow()
		defer f.Close()
		nc, err := net.FileConn(f)
		if err != nil {
			got <- err.Error()
			return
		}
		c2 := Adopt(nc, st, 1<<16)
		defer c2.CloseNow()
		_ = c2.Write(context.Background(), Text, []byte("adopted"))
		for {
			_, b, err := c2.Read()
			if err != nil {
				close(got)
				return
			}
			got <- string(b)
		}
	})
	nc := rawDial(t, u)
	_, err := nc.Write(frame(true, Text, true, []byte("one")))
	require.NoError(t, err)
	require.Equal(t, "one", <-got)
	two := append(frame(false, Text, true, []byte("tw")), frame(true, opCont, true, []byte("o"))...)
	_, err = nc.Write(two[:4]) // half a frame
	require.NoError(t, err)
	// The adopted side says so: then send the rest.
	hdr := make([]byte, 2)
	_, err = io.ReadFull(nc, hdr)
	require.NoError(t, err)
	msg := make([]byte, hdr[1])
	_, err = io.ReadFull(nc, msg)
	require.NoError(t, err)
	require.Equal(t, "adopted", string(msg))
	_, err = nc.Write(two[4:])
	require.NoError(t, err)
	_, err = nc.Write(frame(true, Binary, true, []byte("three")))
	require.NoError(t, err)
	require.Equal(t, "two", <-got)
	require.Equal(t, "three", <-got)
	_, err = nc.Write(frame(true, opClose, true, []byte{3, 232}))
	require.NoError(t, err)
	_, open := <-got
	require.False(t, open)
}

// TestDetachWithAStuckWrite: a write blocked on a peer that does not read keeps Detach from a
// half-written frame: it fails when its context ends, and the connection can still be dropped.
func TestDetachWithAStuckWrite(t *testing.T) {
	res := make(chan error, 1)
	u := server(t, func(c *Conn) {
		stuck := make(chan error, 1)
		wrote := make(chan struct{}, 1)
		go func() {
			big := make([]byte, 1<<20)
			for {
				if err := c.Write(context.Background(), Binary, big); err != nil {
					stuck <- err
					return
				}
				select {
				case wrote <- struct{}{}:
				default:
				}
			}
		}()
		// The socket buffers fill: the writer is blocked once no write completes for a while.
		for {
			select {
			case <-wrote:
				continue
			case <-time.After(200 * time.Millisecond):
			}
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, _, err := c.Detach(ctx)
		res <- err
		c.CloseNow()
		<-stuck
	})
	nc := rawDial(t, u) // never reads
	_ = nc
	err := <-res
	require.ErrorIs(t, err, context.DeadlineExceeded)
}
