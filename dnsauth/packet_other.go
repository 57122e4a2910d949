//go:build !linux || !(amd64 || arm64)

package dnsauth

import (
	"net"
	"time"
)

func setReusePort(uintptr) error { return nil }

func wake(*net.UDPConn) {}

// serve is the portable loop: one packet at a time.
func (s *PacketServer) serve(conn *net.UDPConn) {
	cache := s.newCache()
	buf := make([]byte, 4096)
	w := &packetWriter{local: conn.LocalAddr(), remote: &net.UDPAddr{}, out: make([]byte, 4096)}
	for {
		n, ap, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			return
		}
		s.sync(cache)
		if m := s.answer(cache, w, buf[:n], ap, time.Now()); m > 0 {
			_, _ = conn.WriteToUDPAddrPort(w.out[:m], ap)
		}
	}
}
