// Package wsframe parses RFC 6455 frame headers, for the code that reads WebSocket frames
// without a WebSocket library: the session proxy's splice relay and event loops, conman's
// attach codec (internal/wsconn) and the load programs.
package wsframe

import (
	"encoding/binary"
	"fmt"
)

// MaxLength is the largest payload length Header accepts; a 64-bit length past it (the RFC
// forbids the top bit) is an error.
const MaxLength = 1 << 62

// Header parses the frame header at the start of p. hl is the header's length, masking key
// included, and length the payload's. ok is false while p is too short to hold the whole header.
func Header(p []byte) (hl int, length uint64, ok bool, err error) {
	if len(p) < 2 {
		return 0, 0, false, nil
	}
	hl = 2
	length = uint64(p[1] & 0x7f)
	switch length {
	case 126:
		hl = 4
	case 127:
		hl = 10
	}
	if p[1]&0x80 != 0 {
		hl += 4
	}
	if len(p) < hl {
		return 0, 0, false, nil
	}
	switch length {
	case 126:
		length = uint64(binary.BigEndian.Uint16(p[2:4]))
	case 127:
		length = binary.BigEndian.Uint64(p[2:10])
		if length > MaxLength {
			return 0, 0, false, fmt.Errorf("wsframe: a frame of %d bytes", length)
		}
	}
	return hl, length, true, nil
}
