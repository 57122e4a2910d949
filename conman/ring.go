package conman

// ring holds the last len(buf) bytes of a shell's output, addressed by output offset (bytes
// produced since the shell started).
type ring struct {
	buf      []byte
	produced int64 // total bytes written
}

func newRing(size int) *ring { return &ring{buf: make([]byte, size)} }

// oldest is the offset of the oldest byte held.
func (r *ring) oldest() int64 { return max(0, r.produced-int64(len(r.buf))) }

func (r *ring) write(p []byte) {
	n := len(r.buf)
	if len(p) >= n {
		r.produced += int64(len(p) - n)
		p = p[len(p)-n:]
	}
	i := int(r.produced % int64(n))
	c := copy(r.buf[i:], p)
	copy(r.buf, p[c:])
	r.produced += int64(len(p))
}

// read copies into dst the bytes from offset off (oldest <= off <= produced) and returns how
// many it copied.
func (r *ring) read(off int64, dst []byte) int {
	avail := r.produced - off
	if avail <= 0 || off < r.oldest() {
		return 0
	}
	if int64(len(dst)) > avail {
		dst = dst[:avail]
	}
	n := len(r.buf)
	i := int(off % int64(n))
	c := copy(dst, r.buf[i:])
	c += copy(dst[c:], r.buf[:len(dst)-c])
	return c
}

// snapshot returns the bytes held, oldest first.
func (r *ring) snapshot() []byte {
	out := make([]byte, r.produced-r.oldest())
	r.read(r.oldest(), out)
	return out
}
