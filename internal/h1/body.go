package h1

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
)

// spliceMin is the remaining body length from which CopyLength hands the copy to the kernel
// (net.TCPConn.ReadFrom splices TCP to TCP) instead of reading it through user space.
const spliceMin = 64 << 10

// maxOut bounds what a copier collects in out before writing it.
const maxOut = 32 << 10

// ErrClient marks a failure to write to the destination (the client went away), as opposed to a
// failure of the source (the backend).
var ErrClient = errors.New("h1: write to the client failed")

// WriteOut writes what is pending in out to dst and empties it; errors wrap ErrClient.
func WriteOut(dst net.Conn, out *[]byte) error { return writeOut(dst, out) }

func writeOut(dst net.Conn, out *[]byte) error {
	if len(*out) == 0 {
		return nil
	}
	_, err := dst.Write(*out)
	*out = (*out)[:0]
	if err != nil {
		return errors.Join(ErrClient, err)
	}
	return nil
}

// CopyLength copies n body bytes from src to dst, after the bytes pending in out (a head).
// Bytes are written as they arrive (pending output is written before every blocking read), and
// large remainders between two TCP connections are spliced by the kernel. What is left in out
// at the end is the caller's to write. Errors writing to dst wrap ErrClient.
func CopyLength(dst net.Conn, out *[]byte, src *Reader, n int64) error {
	for n > 0 {
		if buf := src.Buffered(); len(buf) > 0 {
			k := int(min(int64(len(buf)), n))
			if len(*out)+k <= maxOut {
				*out = append(*out, buf[:k]...)
			} else {
				if err := writeOut(dst, out); err != nil {
					return err
				}
				if _, err := dst.Write(buf[:k]); err != nil {
					return errors.Join(ErrClient, err)
				}
			}
			src.Discard(k)
			n -= int64(k)
			continue
		}
		if err := writeOut(dst, out); err != nil {
			return err
		}
		if n >= spliceMin {
			if tc := tcpOf(dst); tc != nil {
				if sc := tcpOf(src.Conn); sc != nil {
					lr := &io.LimitedReader{R: sc, N: n}
					_, err := tc.ReadFrom(lr)
					n = lr.N
					if err != nil {
						return err // splice does not tell which side failed
					}
					if n > 0 {
						return io.ErrUnexpectedEOF
					}
					return nil
				}
			}
		}
		if err := src.Fill(); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// tcpOf returns the TCP connection under c (a *net.TCPConn, or a wrapper with a NetConn method
// such as a connlimit connection), or nil; never the one under a TLS connection.
func tcpOf(c net.Conn) *net.TCPConn {
	for i := 0; i < 4; i++ {
		switch v := c.(type) {
		case *net.TCPConn:
			return v
		case *tls.Conn:
			return nil // its NetConn carries ciphertext: never splice around it
		case interface{ NetConn() net.Conn }:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// CopyChunked copies a chunked body from src to dst, re-framing each chunk (extensions are
// dropped) and passing the trailer fields keep accepts (nil: all). The body is validated as it
// goes: a malformed chunk line, size, terminator or trailer is ErrMalformed. What is left in out
// at the end is the caller's to write.
func CopyChunked(dst net.Conn, out *[]byte, src *Reader, keep func(name []byte) bool) error {
	for {
		line, err := readLine(dst, out, src, 4096)
		if err != nil {
			return err
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return ErrMalformed
		}
		src.Discard(len(line) + 2)
		if size == 0 {
			break
		}
		*out = strconv.AppendUint(*out, uint64(size), 16)
		*out = append(*out, "\r\n"...)
		if err := CopyLength(dst, out, src, size); err != nil {
			return err
		}
		// The chunk's CRLF.
		for len(src.Buffered()) < 2 {
			if err := writeOut(dst, out); err != nil {
				return err
			}
			if err := fill(src); err != nil {
				return err
			}
		}
		if b := src.Buffered(); b[0] != '\r' || b[1] != '\n' {
			return ErrMalformed
		}
		src.Discard(2)
		*out = append(*out, "\r\n"...)
	}
	*out = append(*out, "0\r\n"...)
	// Trailer fields, then the empty line.
	for n := 0; ; n++ {
		line, err := readLine(dst, out, src, 64<<10)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			src.Discard(2)
			break
		}
		if n == MaxFields {
			return ErrMalformed
		}
		name, ok := checkField(line)
		if !ok {
			return ErrMalformed
		}
		if keep == nil || keep(name) {
			*out = append(*out, line...)
			*out = append(*out, "\r\n"...)
		}
		src.Discard(len(line) + 2)
	}
	*out = append(*out, "\r\n"...)
	return nil
}

// CopyUntilEOF copies a body delimited by the end of the connection from src to dst as chunks.
// What is left in out at the end is the caller's to write.
func CopyUntilEOF(dst net.Conn, out *[]byte, src *Reader) error {
	for {
		if buf := src.Buffered(); len(buf) > 0 {
			*out = strconv.AppendUint(*out, uint64(len(buf)), 16)
			*out = append(*out, "\r\n"...)
			*out = append(*out, buf...)
			*out = append(*out, "\r\n"...)
			src.Discard(len(buf))
		}
		if err := writeOut(dst, out); err != nil {
			return err
		}
		if err := src.Fill(); err != nil {
			if err == io.EOF {
				*out = append(*out, "0\r\n\r\n"...)
				return nil
			}
			return err
		}
	}
}

// fill is src.Fill with EOF turned into ErrUnexpectedEOF.
func fill(src *Reader) error {
	err := src.Fill()
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readLine returns the next CRLF-terminated line of src (without the CRLF, not consumed), writing
// pending output before it blocks. A line longer than max, or with a bare CR or LF, is
// ErrMalformed.
func readLine(dst net.Conn, out *[]byte, src *Reader, max int) ([]byte, error) {
	for {
		b := src.Buffered()
		for i := 0; i < len(b); i++ {
			if b[i] == '\n' {
				if i == 0 || b[i-1] != '\r' {
					return nil, ErrMalformed
				}
				line := b[:i-1]
				for _, c := range line {
					if c == '\r' {
						return nil, ErrMalformed
					}
				}
				return line, nil
			}
		}
		if len(b) > max {
			return nil, ErrMalformed
		}
		if err := writeOut(dst, out); err != nil {
			return nil, err
		}
		if err := fill(src); err != nil {
			if err == ErrFull {
				return nil, ErrMalformed
			}
			return nil, err
		}
	}
}

// parseChunkSize parses a chunk-size line: hex digits, then optional whitespace and ;extensions.
func parseChunkSize(line []byte) (int64, bool) {
	var n int64
	i := 0
	for ; i < len(line) && isHex(line[i]); i++ {
		if i == 15 {
			return 0, false
		}
		c := line[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		default:
			d = c - 'A' + 10
		}
		n = n<<4 | int64(d)
	}
	if i == 0 {
		return 0, false
	}
	rest := line[i:]
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t') {
		rest = rest[1:]
	}
	if len(rest) > 0 && rest[0] != ';' {
		return 0, false
	}
	for _, c := range rest {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return 0, false
		}
	}
	return n, true
}

// checkField validates a trailer field line and returns its name.
func checkField(line []byte) ([]byte, bool) {
	i := 0
	for i < len(line) && isTchar(line[i]) {
		i++
	}
	if i == 0 || i == len(line) || line[i] != ':' {
		return nil, false
	}
	for _, c := range line[i+1:] {
		if c < 0x20 && c != '\t' || c == 0x7f {
			return nil, false
		}
	}
	return line[:i], true
}
