package tombstone

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HopHeader is the header a forwarding cluster adds to the request it forwards:
//
//	Switchyard-Hop: v1; via=a,b; t=1795316400; sig=<base64url HMAC-SHA256>
//
// via lists the clusters the request has passed, in order; t is the Unix time of signing; sig is
// HMAC-SHA256 under the platform's shared hop secret of
//
//	"switchyard-hop v1\n" + via + "\n" + t + "\n" + lowercase(Host) + "\n" + method + " " + request-target
//
// so a header cannot be forged without the secret, nor reused for another host or URL, nor
// replayed after MaxHopAge.
const HopHeader = "Switchyard-Hop"

// CDNLoopHeader is RFC 8586's loop header; forwarding clusters append "switchyard; cluster=<id>"
// to it, for people and for RFC-aware intermediaries. Loop detection relies only on HopHeader,
// which a client cannot forge; inbound CDN-Loop values are kept as RFC 8586 asks.
const CDNLoopHeader = "CDN-Loop"

// hop is a verified HopHeader.
type hop struct {
	via []string
	at  time.Time
}

var errHop = errors.New("tombstone: bad hop header")

func hopMAC(secret []byte, via string, ts int64, host, method, target string) []byte {
	var buf [512]byte
	return hopMACWith(hmac.New(sha256.New, secret), buf[:0], via, ts, host, method, target)
}

// hopMACWith computes the MAC with m (reset), using scratch to assemble the signed text, and
// appends nothing to scratch's caller: it returns the 32-byte MAC in its own array.
func hopMACWith(m hash.Hash, scratch []byte, via string, ts int64, host, method, target string) []byte {
	b := append(scratch, "switchyard-hop v1\n"...)
	b = append(b, via...)
	b = append(b, '\n')
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, '\n')
	for i := 0; i < len(host); i++ {
		c := host[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	b = append(b, '\n')
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, target...)
	m.Write(b)
	var sum [sha256.Size]byte
	return m.Sum(sum[:0])
}

// hopSigner signs with one secret, reusing HMAC states across requests.
type hopSigner struct{ pool sync.Pool }

func newHopSigner(secret []byte) *hopSigner {
	s := &hopSigner{}
	s.pool.New = func() any { return hmac.New(sha256.New, secret) }
	return s
}

func (s *hopSigner) sign(via []string, at time.Time, host, method, target string) string {
	var buf [512]byte
	out := append(buf[:0], "v1; via="...)
	for i, c := range via {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, c...)
	}
	v := out[len("v1; via="):]
	ts := at.Unix()
	m := s.pool.Get().(hash.Hash)
	m.Reset()
	var scratch [512]byte
	sig := hopMACWith(m, scratch[:0], string(v), ts, host, method, target)
	s.pool.Put(m)
	out = append(out, "; t="...)
	out = strconv.AppendInt(out, ts, 10)
	out = append(out, "; sig="...)
	out = base64.RawURLEncoding.AppendEncode(out, sig)
	return string(out)
}

// parseHop verifies value against any of secrets, for a request to host with method and target,
// at time now, accepting signing times within maxAge either side.
func parseHop(value string, secrets [][]byte, now time.Time, maxAge time.Duration, host, method, target string) (hop, error) {
	parts := strings.Split(value, ";")
	if len(parts) != 4 || strings.TrimSpace(parts[0]) != "v1" {
		return hop{}, fmt.Errorf("%w: want \"v1; via=...; t=...; sig=...\"", errHop)
	}
	var via, ts, sig string
	for i, want := range []string{"via=", "t=", "sig="} {
		p := strings.TrimSpace(parts[i+1])
		if !strings.HasPrefix(p, want) {
			return hop{}, fmt.Errorf("%w: field %d is not %s", errHop, i+1, want)
		}
		switch i {
		case 0:
			via = p[len(want):]
		case 1:
			ts = p[len(want):]
		case 2:
			sig = p[len(want):]
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return hop{}, fmt.Errorf("%w: bad time", errHop)
	}
	mac, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || len(mac) != sha256.Size {
		return hop{}, fmt.Errorf("%w: bad signature encoding", errHop)
	}
	ok := false
	for _, s := range secrets {
		if hmac.Equal(mac, hopMAC(s, via, t, host, method, target)) {
			ok = true
			break
		}
	}
	if !ok {
		return hop{}, fmt.Errorf("%w: signature does not verify", errHop)
	}
	at := time.Unix(t, 0)
	if d := now.Sub(at); d > maxAge || d < -maxAge {
		return hop{}, fmt.Errorf("%w: signed %s ago, outside the %s window", errHop, d.Round(time.Second), maxAge)
	}
	if via == "" {
		return hop{}, fmt.Errorf("%w: empty via", errHop)
	}
	return hop{via: strings.Split(via, ","), at: at}, nil
}

// signHop returns the header value for a request that has passed via.
func signHop(secret []byte, via []string, at time.Time, host, method, target string) string {
	return newHopSigner(secret).sign(via, at, host, method, target)
}
