//go:build !amd64 && !arm64

package process

// No filter is defined for this architecture: the sandbox refuses to start.
const (
	auditArch        = 0
	x32Bit           = 0
	maxVettedSyscall = 0
)

var archDeniedSyscalls []uintptr
