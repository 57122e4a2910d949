package process

import "golang.org/x/sys/unix"

const (
	auditArch = unix.AUDIT_ARCH_X86_64
	// x32Bit marks x32 system calls, another ABI into the same kernel: refused.
	x32Bit = 0x40000000
	// maxVettedSyscall is the newest system call number reviewed for the filter.
	maxVettedSyscall = unix.SYS_RSEQ_SLICE_YIELD
)

// archDeniedSyscalls are amd64's legacy or privileged calls that the generic table lacks.
var archDeniedSyscalls = []uintptr{
	unix.SYS_IOPL, unix.SYS_IOPERM, unix.SYS_CREATE_MODULE, unix.SYS_GET_KERNEL_SYMS,
	unix.SYS_QUERY_MODULE, unix.SYS_USELIB, unix.SYS_USTAT, unix.SYS_SYSFS, unix.SYS__SYSCTL,
	unix.SYS_NFSSERVCTL, unix.SYS_AFS_SYSCALL, unix.SYS_TUXCALL, unix.SYS_SECURITY,
	unix.SYS_VSERVER, unix.SYS_PUTPMSG, unix.SYS_GETPMSG, unix.SYS_MODIFY_LDT,
}
