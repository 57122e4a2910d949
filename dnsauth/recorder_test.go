package dnsauth_test

import (
	"net"

	"github.com/miekg/dns"
)

// recorder is a dns.ResponseWriter that keeps what the handler wrote, for calling ServeDNS
// directly (benchmarks, fuzzing, and requests a real server would filter before the handler).
type recorder struct {
	network string
	raw     []byte
	msg     *dns.Msg
	writes  int
}

func (r *recorder) LocalAddr() net.Addr {
	if r.network == "tcp" {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53}
}

func (r *recorder) RemoteAddr() net.Addr {
	if r.network == "tcp" {
		return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	}
	return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
}

func (r *recorder) WriteMsg(m *dns.Msg) error {
	b, err := m.Pack()
	if err != nil {
		return err
	}
	_, err = r.Write(b)
	return err
}

func (r *recorder) Write(b []byte) (int, error) {
	r.writes++
	r.raw = append(r.raw[:0], b...)
	m := new(dns.Msg)
	if err := m.Unpack(r.raw); err != nil {
		r.msg = nil
		return len(b), nil
	}
	r.msg = m
	return len(b), nil
}

func (r *recorder) Close() error        { return nil }
func (r *recorder) TsigStatus() error   { return nil }
func (r *recorder) TsigTimersOnly(bool) {}
func (r *recorder) Hijack()             {}
