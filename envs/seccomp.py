"""A seccomp filter for sandboxes, in the spirit of Docker's default profile.

Namespaces and a uid of its own keep a sandbox from the host's files, network and
processes; the kernel's attack surface is the rest. This filter refuses, with EPERM,
the system calls a tool-using agent never needs and kernel exploits often start from:
new namespaces (`unshare`, `setns`, `clone` with a namespace flag), mounts, `ptrace`
and cross-process memory access, `bpf`, keyrings, `perf_event_open`, `userfaultfd`,
modules, kexec, and handles that reopen files by inode. `clone3`, whose flags sit in
memory a filter cannot read, answers ENOSYS, so that libc falls back to `clone`.
Calls through another ABI (32-bit on x86-64) are refused outright.

The filter is a classic BPF program installed with `prctl(PR_SET_SECCOMP)` after
`no_new_privs`; it holds for the server and everything it starts, and cannot be lifted.
Local sandboxes get it from their supervisor; in a container, where Docker's own profile
allows `ptrace` between processes of one uid, the server adds it to that profile on start
(`python -m envs ... --harden`: filters stack, each call must pass both).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

_DENIED = (
    "mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "mount_setattr", "unshare", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "keyctl",
    "add_key", "request_key", "perf_event_open", "userfaultfd", "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load", "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot",
    "acct", "settimeofday", "clock_settime", "quotactl", "lookup_dcookie", "iopl", "ioperm",
)  # fmt: skip

# System call numbers (asm/unistd_64.h on x86-64, asm-generic/unistd.h on arm64).
_SYSCALLS = {
    "x86_64": {
        "mount": 165, "umount2": 166, "pivot_root": 155, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "move_mount": 429, "open_tree": 428, "mount_setattr": 442, "unshare": 272, "setns": 308,
        "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "keyctl": 250,
        "add_key": 248, "request_key": 249, "perf_event_open": 298, "userfaultfd": 323, "init_module": 175,
        "finit_module": 313, "delete_module": 176, "kexec_load": 246, "kexec_file_load": 320,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "swapon": 167, "swapoff": 168, "reboot": 169,
        "acct": 163, "settimeofday": 164, "clock_settime": 227, "quotactl": 179, "lookup_dcookie": 212,
        "iopl": 172, "ioperm": 173, "clone": 56, "clone3": 435,
    },
    "aarch64": {
        "mount": 40, "umount2": 39, "pivot_root": 41, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
        "fspick": 433, "move_mount": 429, "open_tree": 428, "mount_setattr": 442, "unshare": 97, "setns": 268,
        "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280, "keyctl": 219,
        "add_key": 217, "request_key": 218, "perf_event_open": 241, "userfaultfd": 282, "init_module": 105,
        "finit_module": 273, "delete_module": 106, "kexec_load": 104, "kexec_file_load": 294,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "swapon": 224, "swapoff": 225, "reboot": 142,
        "acct": 89, "settimeofday": 170, "clock_settime": 112, "quotactl": 60, "lookup_dcookie": 18,
        "clone": 220, "clone3": 435,
    },
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000  # x86-64 system calls through the x32 ABI carry this bit

_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME."""

# Classic BPF, as seccomp reads it (linux/filter.h, linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # in struct seccomp_data (arg 0's low word, little-endian)
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _PR_SET_NO_NEW_PRIVS = 22, 2, 38


class SeccompUnavailable(RuntimeError):
    """This machine's architecture has no filter here; the sandbox would run without one."""


def _program(machine: str) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions; jumps are resolved from labels below."""
    numbers = _SYSCALLS[machine]
    steps: list[tuple[int, str | int, str | int, int]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 1, 0, _AUDIT_ARCH[machine]),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if machine == "x86_64":
        steps.append((_JGE_K, "deny", 0, _X32_BIT))
    steps += [(_JEQ_K, "deny", 0, numbers[name]) for name in _DENIED if name in numbers]
    steps += [
        (_JEQ_K, "nosys", 0, numbers["clone3"]),
        (_JEQ_K, 0, "allow", numbers["clone"]),
        (_LD_W_ABS, 0, 0, _OFFSET_ARG0),
        (_JSET_K, "deny", "allow", _NAMESPACE_FLAGS),
    ]
    labels = {"allow": len(steps), "deny": len(steps) + 1, "nosys": len(steps) + 2}
    steps += [
        (_RET_K, 0, 0, _RET_ALLOW),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
    ]

    def jump(at: int, to: str | int) -> int:
        return labels[to] - at - 1 if isinstance(to, str) else to

    return [(code, jump(i, jt), jump(i, jf), k) for i, (code, jt, jf, k) in enumerate(steps)]


def install() -> None:
    """Filter this process and everything it will start (setting no_new_privs, which it needs)."""
    machine = platform.machine()
    if machine not in _SYSCALLS:
        raise SeccompUnavailable(f"no seccomp filter for {machine}; sandboxes need x86_64 or aarch64")
    program = b"".join(struct.pack("HBBI", *insn) for insn in _program(machine))
    filters = ctypes.create_string_buffer(program)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program) // 8, ctypes.addressof(filters))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP): {errno.errorcode.get(err, err)}")
