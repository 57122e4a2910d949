package idlepark

import "golang.org/x/sys/unix"

// inq returns the bytes waiting in a socket's receive queue.
func inq(fd uintptr) int {
	n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
	if err != nil {
		return -1
	}
	return n
}
