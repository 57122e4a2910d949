package wsconn

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// fakeConn feeds fixed bytes to a Conn, then end (io.EOF or a deadline), and discards writes.
type fakeConn struct {
	r   *bytes.Reader
	end error
}

func (f *fakeConn) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		err = f.end
	}
	return n, err
}
func (f *fakeConn) Write(p []byte) (int, error)        { return len(p), nil }
func (f *fakeConn) Close() error                       { return nil }
func (f *fakeConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (f *fakeConn) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (f *fakeConn) SetDeadline(t time.Time) error      { return nil }
func (f *fakeConn) SetReadDeadline(t time.Time) error  { return nil }
func (f *fakeConn) SetWriteDeadline(t time.Time) error { return nil }

type result struct {
	msgs [][]byte
	end  string // how reading ended: eof, close, protocol
}

func readAll(c *Conn) (result, error) {
	var r result
	for {
		typ, b, err := c.Read()
		if err == nil {
			if len(b) > c.maxMsg || (typ != Text && typ != Binary) {
				return r, errors.New("bad message")
			}
			r.msgs = append(r.msgs, append([]byte{byte(typ)}, b...))
			continue
		}
		var ce *CloseError
		var pe *ProtocolError
		switch {
		case errors.As(err, &ce):
			r.end = "close"
		case errors.As(err, &pe):
			r.end = "protocol"
		case errors.Is(err, io.EOF):
			r.end = "eof"
		default:
			return r, err
		}
		return r, nil
	}
}

// FuzzRead reads hostile bytes, once in one go and once split in two with a handoff (state, then
// Adopt) between the halves: no panic, no message over the cap, and the same messages and end.
func FuzzRead(f *testing.F) {
	f.Add(frame(true, Binary, true, []byte("hello")), uint16(3))
	f.Add(append(frame(false, Text, true, []byte("a")), frame(true, opCont, true, []byte("b"))...), uint16(7))
	f.Add(append(frame(true, opPing, true, []byte("p")), frame(true, opClose, true, []byte{3, 232})...), uint16(2))
	f.Add([]byte{0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4}, uint16(1))
	f.Add([]byte{0x82, 0xff, 0, 0, 0, 0, 0, 0, 0x10, 0, 1, 2, 3, 4}, uint16(5))
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		const maxMsg = 1 << 12
		whole, err := readAll(Adopt(&fakeConn{r: bytes.NewReader(data), end: io.EOF}, State{}, maxMsg))
		if err != nil {
			t.Fatal(err)
		}
		k := int(split) % (len(data) + 1)
		a := Adopt(&fakeConn{r: bytes.NewReader(data[:k]), end: os.ErrDeadlineExceeded}, State{}, maxMsg)
		first, err := readAll(a)
		var got result
		if err == nil {
			got = first // it ended within the first half
		} else {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			b := Adopt(&fakeConn{r: bytes.NewReader(data[k:]), end: io.EOF}, a.state(), maxMsg)
			second, err := readAll(b)
			if err != nil {
				t.Fatal(err)
			}
			got = result{msgs: append(first.msgs, second.msgs...), end: second.end}
		}
		if got.end != whole.end || len(got.msgs) != len(whole.msgs) {
			t.Fatalf("split at %d: %d messages ending %s, want %d ending %s", k, len(got.msgs), got.end, len(whole.msgs), whole.end)
		}
		for i := range got.msgs {
			if !bytes.Equal(got.msgs[i], whole.msgs[i]) {
				t.Fatalf("split at %d: message %d differs", k, i)
			}
		}
	})
}
