package sessions

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzSessionsSpliceFrames feeds the splice relay's conman side arbitrary frame sequences (the
// fuzzer picks payload sizes, opcodes, masking and how the bytes are split across writes) and
// checks the client receives exactly the same byte stream, and that the relay noticed a close
// frame's status code.
func FuzzSessionsSpliceFrames(f *testing.F) {
	f.Add([]byte{0x02, 0x05, 0x00, 0x01}, uint8(3))
	f.Add([]byte{0x01, 0x7e, 0x01, 0x00, 0x08, 0x02, 0x03, 0xe8}, uint8(1))
	f.Add([]byte{0x02, 0xff, 0xff, 0x01, 0x88, 0x00}, uint8(7))
	f.Fuzz(func(t *testing.T, spec []byte, split uint8) {
		var stream bytes.Buffer
		wantClose := -1
		for i := 0; i+2 <= len(spec) && stream.Len() < 64<<10; i += 2 {
			op, size := spec[i]&0x0f, int(spec[i+1])*int(spec[i+1])*3 // up to ~195 KiB
			masked := spec[i]&0x10 != 0
			if op >= 8 {
				size %= 126
			}
			payload := bytes.Repeat([]byte{byte(i)}, size)
			if op == 8 {
				wantClose = 0 // a close frame without a status
				if size >= 2 {
					binary.BigEndian.PutUint16(payload, uint16(1000+i))
					wantClose = 1000 + i
				}
			}
			stream.Write(testFrame(op, masked, payload))
		}
		back, backPeer := net.Pipe()
		client, clientPeer := net.Pipe()
		sp := &spliceRelay{client: client, back: back}
		deadline := time.Now().Add(5 * time.Second)
		for _, c := range []net.Conn{back, backPeer, client, clientPeer} {
			c.SetDeadline(deadline)
		}
		pending := stream.Bytes()
		if split > 0 && int(split) < len(pending) {
			sp.backPending = pending[:split] // as if read past the 101
			pending = pending[split:]
		}
		go func() {
			for len(pending) > 0 {
				n := min(len(pending), 64+int(split)*97)
				backPeer.Write(pending[:n])
				pending = pending[n:]
			}
			backPeer.Close()
		}()
		got := make(chan []byte)
		go func() {
			b, _ := io.ReadAll(clientPeer)
			got <- b
		}()
		res := sp.backendToClient()
		client.Close()
		b := <-got
		if !bytes.Equal(b, stream.Bytes()) {
			t.Fatalf("client got %d bytes, want %d (err %v)", len(b), stream.Len(), res.err)
		}
		if res.err != nil || !res.atBoundary {
			t.Fatalf("result %+v", res)
		}
		if wantClose >= 0 && res.closeCode != wantClose {
			t.Fatalf("close code %d, want %d", res.closeCode, wantClose)
		}
	})
}

// testFrame builds one final frame, masked with a fixed key when asked.
func testFrame(op byte, masked bool, payload []byte) []byte {
	f := []byte{0x80 | op}
	m := byte(0)
	if masked {
		m = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		f = append(f, m|byte(n))
	case n < 1<<16:
		f = append(f, m|126, byte(n>>8), byte(n))
	default:
		f = binary.BigEndian.AppendUint64(append(f, m|127), uint64(n))
	}
	if masked {
		key := []byte{9, 8, 7, 6}
		f = append(f, key...)
		for i, b := range payload {
			f = append(f, b^key[i%4])
		}
		return f
	}
	return append(f, payload...)
}
