// Package rawio holds the system calls of the event loops (internal/eventloop, hosting's): raw,
// without the runtime's entersyscall, for non-blocking descriptors and zero-timeout epoll waits,
// so a loop keeps its P across them. None of them may block; an epoll wait with a timeout
// blocks for at most that long with the P held.
package rawio

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Read reads from a non-blocking descriptor.
func Read(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

// Write writes to a non-blocking descriptor.
func Write(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	return int(r), e
}

// EpollWait waits at most timeout milliseconds for events of the epoll set ep (len(events) > 0).
func EpollWait(ep int, events []unix.EpollEvent, timeout int) (int, syscall.Errno) {
	r, _, e := unix.RawSyscall6(unix.SYS_EPOLL_PWAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])),
		uintptr(len(events)), uintptr(timeout), 0, 0)
	return int(r), e
}
