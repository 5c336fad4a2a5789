"""A seccomp filter for sandboxes: what Docker's default profile refuses a container without
capabilities, and the cross-process calls it allows.

Namespaces and a uid of its own keep a sandbox from the host's files, network and
processes; the kernel's attack surface is the rest. Docker's default profile
(moby/profiles, seccomp/default.json) is an allow-list; reviewed against it (2026-12), this
filter refuses with EPERM every call on this architecture's table that the profile does not
allow a container holding no capability, so that the same calls fail on the local provider
as in a container, and adds what Docker allows but a sandbox must not have:

    cross-process access  ptrace, process_vm_readv/writev (Docker allows them; one uid's
                          processes could read and write each other's memory)
    io_uring              io_uring_setup/enter/register: a second system call interface, which
                          a filter cannot see into (Docker refuses it too)
    handles               name_to_handle_at, open_by_handle_at: files reopened by inode
    modify_ldt            x86 descriptor tables, an old exploit path (Docker allows it on x86-64)

Calls allowed only for some arguments, as in Docker's profile: `clone` without namespace
flags; `clone3`, whose flags sit in memory a filter cannot read, answers ENOSYS so that libc
falls back to `clone`; `personality` only for the five personas Docker allows; `socket` for
every family but AF_ALG (the kernel's crypto API) and AF_VSOCK (the hypervisor's sockets).
Calls through another ABI (32-bit on x86-64, x32) are refused outright. Everything else is
allowed: it is on Docker's list, and what a tool-using agent's programs (shells, compilers,
interpreters) need.

The filter is a classic BPF program installed with `prctl(PR_SET_SECCOMP)` after
`no_new_privs`; it holds for the server and everything it starts, and cannot be lifted.
Local sandboxes get it from their supervisor; in a container, on top of the engine's own
profile (`python -m envs ... --harden`: filters stack, each call must pass both).
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

DENIED = (
    # new namespaces and mounts
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
    "move_mount", "open_tree", "mount_setattr",
    # another process's memory and descriptors
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd", "process_madvise",
    # interfaces a filter cannot see into, and kernel programs
    "io_uring_setup", "io_uring_enter", "io_uring_register", "bpf", "perf_event_open", "userfaultfd",
    # keyrings, modules, the machine itself
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime", "sethostname",
    "setdomainname", "syslog", "vhangup", "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init",
    # files by handle, raw I/O, memory placement (Docker: CAP_SYS_NICE), x86 descriptors
    "open_by_handle_at", "name_to_handle_at", "iopl", "ioperm", "modify_ldt", "mbind", "set_mempolicy",
    "get_mempolicy", "set_mempolicy_home_node", "migrate_pages", "move_pages",
    # obsolete or never implemented
    "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "create_module", "get_kernel_syms", "query_module",
    "getpmsg", "putpmsg", "afs_syscall", "tuxcall", "security", "vserver",
)  # fmt: skip

# System call numbers (asm/unistd_64.h on x86-64, asm-generic/unistd.h on arm64); a name an
# architecture lacks is absent from its table.
_SYSCALLS = {
    "x86_64": {
        "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "move_mount": 429, "open_tree": 428,
        "mount_setattr": 442, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
        "pidfd_getfd": 438, "process_madvise": 440, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250,
        "add_key": 248, "request_key": 249, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163,
        "settimeofday": 164, "clock_settime": 227, "sethostname": 170, "setdomainname": 171, "syslog": 103,
        "vhangup": 153, "quotactl": 179, "quotactl_fd": 443, "lookup_dcookie": 212, "fanotify_init": 300,
        "open_by_handle_at": 304, "name_to_handle_at": 303, "iopl": 172, "ioperm": 173, "modify_ldt": 154,
        "mbind": 237, "set_mempolicy": 238, "get_mempolicy": 239, "set_mempolicy_home_node": 450,
        "migrate_pages": 256, "move_pages": 279, "uselib": 134, "ustat": 136, "sysfs": 139, "_sysctl": 156,
        "nfsservctl": 180, "create_module": 174, "get_kernel_syms": 177, "query_module": 178, "getpmsg": 181,
        "putpmsg": 182, "afs_syscall": 183, "tuxcall": 184, "security": 185, "vserver": 236,
        "clone": 56, "clone3": 435, "personality": 135, "socket": 41,
    },
    "aarch64": {
        "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "chroot": 51,
        "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "move_mount": 429, "open_tree": 428,
        "mount_setattr": 442, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272,
        "pidfd_getfd": 438, "process_madvise": 440, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "keyctl": 219,
        "add_key": 217, "request_key": 218, "init_module": 105, "finit_module": 273, "delete_module": 106,
        "kexec_load": 104, "kexec_file_load": 294, "reboot": 142, "swapon": 224, "swapoff": 225, "acct": 89,
        "settimeofday": 170, "clock_settime": 112, "sethostname": 161, "setdomainname": 162, "syslog": 116,
        "vhangup": 58, "quotactl": 60, "quotactl_fd": 443, "lookup_dcookie": 18, "fanotify_init": 262,
        "open_by_handle_at": 265, "name_to_handle_at": 264, "mbind": 235, "set_mempolicy": 237,
        "get_mempolicy": 236, "set_mempolicy_home_node": 450, "migrate_pages": 238, "move_pages": 239,
        "nfsservctl": 42, "clone": 220, "clone3": 435, "personality": 92, "socket": 198,
    },
}  # fmt: skip
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_X32_BIT = 0x40000000  # x86-64 system calls through the x32 ABI carry this bit

NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
"""CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME."""
PERSONAS = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
"""PER_LINUX, with UNAME26 and/or PER_LINUX32's bit, and the query (0xffffffff): Docker's list."""
REFUSED_SOCKET_FAMILIES = (38, 40)
"""AF_ALG and AF_VSOCK."""

# Classic BPF, as seccomp reads it (linux/filter.h, linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_OFFSET_NR, _OFFSET_ARCH, _OFFSET_ARG0 = 0, 4, 16  # in struct seccomp_data (arg 0's low word, little-endian)
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, _PR_SET_NO_NEW_PRIVS = 22, 2, 38


class SeccompUnavailable(RuntimeError):
    """This machine's architecture has no filter here; the sandbox would run without one."""


Step = tuple[int, "str | int", "str | int", int]


def _program(machine: str) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) instructions. Jumps name a label (a string) or skip a count; a label is
    defined by a ("label", name) entry, which takes no instruction."""
    numbers = _SYSCALLS[machine]
    steps: list[Step | tuple[str, str]] = [
        (_LD_W_ABS, 0, 0, _OFFSET_ARCH),
        (_JEQ_K, 0, "deny", _AUDIT_ARCH[machine]),
        (_LD_W_ABS, 0, 0, _OFFSET_NR),
    ]
    if machine == "x86_64":
        steps.append((_JGE_K, "deny", 0, _X32_BIT))
    steps += [(_JEQ_K, "deny", 0, numbers[name]) for name in DENIED if name in numbers]
    steps += [
        (_JEQ_K, "nosys", 0, numbers["clone3"]),
        (_JEQ_K, "clone", 0, numbers["clone"]),
        (_JEQ_K, "personality", 0, numbers["personality"]),
        (_JEQ_K, "socket", "allow", numbers["socket"]),
        ("label", "clone"),
        (_LD_W_ABS, 0, 0, _OFFSET_ARG0),
        (_JSET_K, "deny", "allow", NAMESPACE_FLAGS),
        ("label", "personality"),
        (_LD_W_ABS, 0, 0, _OFFSET_ARG0),
        *((_JEQ_K, "allow", 0, persona) for persona in PERSONAS),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        ("label", "socket"),
        (_LD_W_ABS, 0, 0, _OFFSET_ARG0),
        *((_JEQ_K, "deny", 0, family) for family in REFUSED_SOCKET_FAMILIES),
        ("label", "allow"),
        (_RET_K, 0, 0, _RET_ALLOW),
        ("label", "deny"),
        (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM),
        ("label", "nosys"),
        (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
    ]
    labels: dict[str, int] = {}
    program: list[Step] = []
    for step in steps:
        if step[0] == "label":
            labels[str(step[1])] = len(program)
        else:
            program.append(step)  # type: ignore[arg-type]

    def jump(at: int, to: str | int) -> int:
        offset = labels[to] - at - 1 if isinstance(to, str) else to
        assert 0 <= offset < 256, f"a BPF jump reaches {offset} instructions"
        return offset

    return [(code, jump(i, jt), jump(i, jf), k) for i, (code, jt, jf, k) in enumerate(program)]


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
