package dnsauth

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"time"
)

// DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018): the server cookie is
// version 1, three reserved bytes, a 32-bit timestamp and SipHash-2-4 over the client cookie,
// those 8 bytes and the client's address, keyed by the server secret. Every server of an anycast
// set given the same secret accepts the others' cookies. A client that returns a valid server
// cookie has proven its address, so response-rate limiting spares it.

// Cookies configures DNS cookies.
type Cookies struct {
	// Secret keys the server cookies (16 bytes). Required.
	Secret [16]byte
	// Previous, if set, is the secret before a rotation: cookies made with it stay valid
	// until they expire (an hour), and new ones are made with Secret.
	Previous *[16]byte
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

const (
	cookieClientLen = 8
	cookieServerLen = 16
	cookieMaxAge    = time.Hour
	cookieRefresh   = 30 * time.Minute // a valid cookie older than this is replaced
	cookieSkew      = 5 * time.Minute  // how far in the future a timestamp may be
)

var errBadCookie = errors.New("dnsauth: malformed cookie option")

// cookieHash is the server cookie's hash for client cookie cc, header (version, reserved,
// timestamp) and client address ip.
func cookieHash(secret *[16]byte, cc []byte, header [8]byte, ip netip.Addr) uint64 {
	var buf [8 + 8 + 16]byte
	n := copy(buf[:], cc)
	n += copy(buf[n:], header[:])
	if ip.Is4() {
		a := ip.As4()
		n += copy(buf[n:], a[:])
	} else {
		a := ip.As16()
		n += copy(buf[n:], a[:])
	}
	return siphash24(binary.LittleEndian.Uint64(secret[:8]), binary.LittleEndian.Uint64(secret[8:]), buf[:n])
}

// cookie handles a request's COOKIE option (hex, as miekg/dns holds it): it returns the
// option to answer with (the client cookie and a server cookie) and whether the request
// carried a valid server cookie. A malformed option is errBadCookie (FORMERR).
func (c *Cookies) cookie(opt string, ip netip.Addr) (answer string, valid bool, err error) {
	var raw [40]byte
	if len(opt)%2 != 0 || len(opt)/2 > len(raw) {
		return "", false, errBadCookie
	}
	n, err := hex.Decode(raw[:], []byte(opt))
	if err != nil || (n != cookieClientLen && (n < cookieClientLen+8 || n > 40)) {
		return "", false, errBadCookie
	}
	cc := raw[:cookieClientLen]
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	ts := uint32(now.Unix())
	if n == cookieClientLen+cookieServerLen && raw[8] == 1 {
		var header [8]byte
		copy(header[:], raw[8:16])
		sent := binary.BigEndian.Uint32(raw[12:16])
		age := time.Duration(int32(ts-sent)) * time.Second // serial arithmetic (RFC 1982)
		if age <= cookieMaxAge && age >= -cookieSkew {
			got := binary.LittleEndian.Uint64(raw[16:24])
			if got == cookieHash(&c.Secret, cc, header, ip) ||
				(c.Previous != nil && got == cookieHash(c.Previous, cc, header, ip)) {
				valid = true
				if age < cookieRefresh && got == cookieHash(&c.Secret, cc, header, ip) {
					return opt[:2*(cookieClientLen+cookieServerLen)], true, nil
				}
			}
		}
	}
	var out [cookieClientLen + cookieServerLen]byte
	copy(out[:], cc)
	out[8] = 1 // version; 3 reserved bytes stay 0
	binary.BigEndian.PutUint32(out[12:16], ts)
	var header [8]byte
	copy(header[:], out[8:16])
	binary.LittleEndian.PutUint64(out[16:], cookieHash(&c.Secret, cc, header, ip))
	return hex.EncodeToString(out[:]), valid, nil
}
