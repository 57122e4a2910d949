package process

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The seccomp layer. The filter is at least as strict as Docker's default profile for a
// container without CAP_SYS_ADMIN: the system calls that profile refuses are refused here with
// EPERM (kernel modules, keyrings, mount and the new mount API, namespaces, ptrace and
// cross-process memory, BPF, perf, userfaultfd, io_uring, time setting, swap, reboot, kexec, the
// kernel log, quotas, handles, personality changes other than the harmless ones); clone with
// any CLONE_NEW* flag is EPERM and clone3 is ENOSYS (its flags sit behind a pointer that seccomp
// cannot read, so C libraries fall back to clone); ioctl TIOCSTI and TIOCLINUX (typing into
// another process's terminal) are EPERM; and, like an allowlist, any system call newer than the
// newest one vetted here (maxVettedSyscall) is ENOSYS, so a kernel upgrade adds nothing
// unreviewed. Foreign-architecture calls (x32, i386 on amd64) kill the process.

// deniedSyscalls is the architecture-independent part of the deny list.
var deniedSyscalls = []uintptr{
	unix.SYS_ACCT, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY, unix.SYS_KEYCTL,
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_USERFAULTFD,
	unix.SYS_CLOCK_ADJTIME, unix.SYS_CLOCK_SETTIME, unix.SYS_SETTIMEOFDAY, unix.SYS_ADJTIMEX,
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD, unix.SYS_REBOOT,
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT,
	unix.SYS_FSOPEN, unix.SYS_FSCONFIG, unix.SYS_FSMOUNT, unix.SYS_FSPICK, unix.SYS_MOVE_MOUNT,
	unix.SYS_OPEN_TREE, unix.SYS_OPEN_TREE_ATTR, unix.SYS_MOUNT_SETATTR,
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	unix.SYS_PTRACE, unix.SYS_PROCESS_VM_READV, unix.SYS_PROCESS_VM_WRITEV, unix.SYS_KCMP,
	unix.SYS_PIDFD_GETFD, unix.SYS_PROCESS_MADVISE,
	unix.SYS_NAME_TO_HANDLE_AT, unix.SYS_OPEN_BY_HANDLE_AT,
	unix.SYS_QUOTACTL, unix.SYS_QUOTACTL_FD, unix.SYS_SWAPON, unix.SYS_SWAPOFF,
	unix.SYS_SYSLOG, unix.SYS_VHANGUP, unix.SYS_FANOTIFY_INIT, unix.SYS_LOOKUP_DCOOKIE,
	unix.SYS_GET_MEMPOLICY, unix.SYS_SET_MEMPOLICY, unix.SYS_MBIND, unix.SYS_MOVE_PAGES,
	unix.SYS_MIGRATE_PAGES, unix.SYS_SET_MEMPOLICY_HOME_NODE,
	unix.SYS_IO_URING_SETUP, unix.SYS_IO_URING_ENTER, unix.SYS_IO_URING_REGISTER,
	unix.SYS_LISTNS,
}

// allowedPersonalities are the personality(2) arguments Docker's profile allows: the default
// (PER_LINUX), UNAME26, PER_LINUX32, their combination, and the query 0xffffffff.
var allowedPersonalities = []uint32{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}

const nsCloneFlags = unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
	unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWTIME

// Offsets in struct seccomp_data.
const (
	offNr   = 0
	offArch = 4
	offArg0 = 16 // low 32 bits of args[0] (little-endian)
	offArg1 = 24
)

func retErrno(errno unix.Errno) bpf.Instruction {
	return bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(errno)}
}

// seccompProgram assembles the filter for the running architecture.
func seccompProgram() ([]bpf.RawInstruction, error) {
	if auditArch == 0 {
		return nil, errors.New("seccomp: no filter for this architecture")
	}
	allow := bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
	p := []bpf.Instruction{
		bpf.LoadAbsolute{Off: offArch, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArch, SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS},
		bpf.LoadAbsolute{Off: offNr, Size: 4},
	}
	if x32Bit != 0 {
		p = append(p,
			bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32Bit, SkipFalse: 1},
			bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS})
	}
	deny := append(append([]uintptr{}, deniedSyscalls...), archDeniedSyscalls...)
	for _, nr := range deny {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(nr), SkipFalse: 1}, retErrno(unix.EPERM))
	}
	// clone3: ENOSYS, so libc falls back to clone, whose flags we can see.
	p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE3, SkipFalse: 1}, retErrno(unix.ENOSYS))
	// clone: no new namespaces.
	p = append(p,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_CLONE, SkipFalse: 4},
		bpf.LoadAbsolute{Off: offArg0, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: nsCloneFlags, SkipFalse: 1},
		retErrno(unix.EPERM),
		allow)
	// ioctl: no TIOCSTI or TIOCLINUX.
	p = append(p,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_IOCTL, SkipFalse: 6},
		bpf.LoadAbsolute{Off: offArg1, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.TIOCSTI, SkipFalse: 1},
		retErrno(unix.EPERM),
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.TIOCLINUX, SkipFalse: 1},
		retErrno(unix.EPERM),
		allow)
	// personality: only the harmless values.
	p = append(p,
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_PERSONALITY, SkipFalse: uint8(2 + 2*len(allowedPersonalities))},
		bpf.LoadAbsolute{Off: offArg0, Size: 4})
	for _, v := range allowedPersonalities {
		p = append(p, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v, SkipFalse: 1}, allow)
	}
	p = append(p, retErrno(unix.EPERM))
	// Anything newer than what was vetted: as if the kernel did not have it.
	p = append(p,
		bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: maxVettedSyscall, SkipFalse: 1},
		retErrno(unix.ENOSYS),
		allow)
	return bpf.Assemble(p)
}

// applySeccomp installs the filter on the calling thread (not the whole process: the init's
// other threads stay unfiltered); what the thread starts from then on inherits it. It sets
// no_new_privs first, as the kernel requires without CAP_SYS_ADMIN.
func applySeccomp(prog []bpf.RawInstruction) error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, ins := range prog {
		filter[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&fprog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
