//go:build linux && (amd64 || arm64)

package dnsauth

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func setReusePort(fd uintptr) error {
	return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
}

// wake makes a read blocked on conn return (with nothing, once its queue is empty): shutdown(2)
// of the receiving side, which Linux allows on an unconnected UDP socket too (it reports
// ENOTCONN but marks the socket and wakes its readers).
func wake(conn *net.UDPConn) {
	if rc, err := conn.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RD) })
	}
}

// blockingTimeout bounds a blocking read, so a socket closed without Shutdown (whose close
// does not wake a blocked reader) ends its loop in this time.
var blockingTimeout = 250 * time.Millisecond // a variable for tests

// setBlocking puts conn's socket in blocking mode with a receive timeout. Go's netpoller keeps
// it registered, which is harmless: the loop does not wait there for reads, and writes still
// pass MSG_DONTWAIT.
func setBlocking(rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		tv := unix.NsecToTimeval(blockingTimeout.Nanoseconds())
		serr = errors.Join(unix.SetNonblock(int(fd), false), unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv))
	})
	return errors.Join(err, serr)
}

// mmsghdr is struct mmsghdr of recvmmsg(2) and sendmmsg(2) on 64-bit Linux.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// serve is one socket's loop: read a batch, answer each, write the answers in one batch.
func (s *PacketServer) serve(conn *net.UDPConn) {
	batch := s.Batch
	if batch <= 0 {
		batch = 64
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	if s.Blocking {
		runtime.LockOSThread()
		// Left locked, the thread ends with the loop instead of returning to Go's pool; but
		// the process's main thread cannot end (Go would park it for good), so it is unlocked.
		tid := unix.Gettid()
		if tid == unix.Getpid() {
			defer runtime.UnlockOSThread()
		}
		if err := setBlocking(rc); err != nil {
			return // closed already
		}
		if s.tids != nil {
			s.tids <- tid
		}
	}
	cache := s.newCache()
	in := make([]mmsghdr, batch)
	out := make([]mmsghdr, batch)
	names := make([]unix.RawSockaddrInet6, batch)
	inIov := make([]unix.Iovec, batch)
	outIov := make([]unix.Iovec, batch)
	const qsize, asize = 4096, 4096 // a larger query is cut (and answered FORMERR)
	inBuf := make([]byte, batch*qsize)
	outBuf := make([]byte, batch*4096)
	for i := range in {
		inIov[i] = unix.Iovec{Base: &inBuf[i*qsize]}
		inIov[i].SetLen(qsize)
		in[i].hdr.Iov, in[i].hdr.Iovlen = &inIov[i], 1
		in[i].hdr.Name = (*byte)(unsafe.Pointer(&names[i]))
	}
	w := &packetWriter{local: conn.LocalAddr(), remote: &net.UDPAddr{}}
	for {
		for i := range in {
			in[i].hdr.Namelen = uint32(unsafe.Sizeof(names[i]))
		}
		var n int
		var serr error
		err := rc.Read(func(fd uintptr) bool {
			// RawSyscall: the call does not block (MSG_DONTWAIT), and skipping the runtime's
			// syscall bookkeeping keeps sysmon from handing the P to another thread whenever
			// a batch takes over 20 µs in the kernel, which cost ~15k context switches a second.
			r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&in[0])), uintptr(len(in)), unix.MSG_DONTWAIT, 0, 0)
			if e == unix.EAGAIN && s.Blocking {
				// Nothing queued: wait in the kernel (a real Syscall, so the P is free meanwhile)
				// for the first packet and take whatever else came with it.
				r, _, e = unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&in[0])), uintptr(len(in)), unix.MSG_WAITFORONE, 0, 0)
				if e == unix.EAGAIN || e == unix.EINTR { // the timeout or a signal: go round
					n, serr = 0, nil
					return true
				}
			}
			if e == unix.EAGAIN || e == unix.EINTR {
				return false // wait in the netpoller
			}
			n, serr = int(r), nil
			if e != 0 {
				serr = e
			}
			return true
		})
		if err != nil {
			return // closed
		}
		if serr != nil {
			continue // a transient error of one read (e.g. ECONNREFUSED from an ICMP): go on
		}
		if n == 0 {
			if s.closing.Load() {
				return // woken by Shutdown
			}
			continue
		}
		now := time.Now()
		s.sync(cache)
		k := 0
		for i := 0; i < n; i++ {
			ap, ok := sockaddrAddrPort(&names[i])
			if !ok {
				continue
			}
			w.out = outBuf[k*asize : (k+1)*asize]
			m := s.answer(cache, w, inBuf[i*qsize:i*qsize+int(in[i].len)], ap, now)
			if m == 0 {
				continue
			}
			outIov[k] = unix.Iovec{Base: &outBuf[k*asize]}
			outIov[k].SetLen(m)
			out[k].hdr = unix.Msghdr{Name: in[i].hdr.Name, Namelen: in[i].hdr.Namelen, Iov: &outIov[k], Iovlen: 1}
			k++
		}
		for sent := 0; sent < k; {
			var werr error
			err := rc.Write(func(fd uintptr) bool {
				r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&out[sent])), uintptr(k-sent), unix.MSG_DONTWAIT, 0, 0)
				if e == unix.EAGAIN {
					return false
				}
				if e != 0 {
					werr = e
					return true
				}
				sent += int(r)
				return true
			})
			if err != nil {
				return
			}
			if werr != nil {
				sent++ // that destination refused it: skip it, send the rest
			}
		}
	}
}

// sockaddrAddrPort reads the source of a received packet, without allocating.
func sockaddrAddrPort(sa *unix.RawSockaddrInet6) (netip.AddrPort, bool) {
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa4.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port), true
	case unix.AF_INET6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), port), true
	}
	return netip.AddrPort{}, false
}
