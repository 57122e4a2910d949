package process

import "golang.org/x/sys/unix"

const (
	auditArch        = unix.AUDIT_ARCH_AARCH64
	x32Bit           = 0
	maxVettedSyscall = unix.SYS_RSEQ_SLICE_YIELD
)

var archDeniedSyscalls = []uintptr{unix.SYS_NFSSERVCTL}
