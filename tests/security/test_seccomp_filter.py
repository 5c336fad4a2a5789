"""The sandbox's system call filter, installed in a child of the test process: each refused
call answers EPERM (clone3 ENOSYS), the arguments Docker's profile allows pass, and the
numbers in the filter's table are the kernel headers' where this machine has them."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import re
import socket
from pathlib import Path

import pytest

from envs.sandbox import seccomp

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="no filter for this CPU")

NUMBERS = seccomp._SYSCALLS.get(platform.machine(), {})


def _errnos_under_filter(calls: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Install the filter in a forked child, make each call (number, then up to 3 arguments),
    and return the errno each left (0: the call was let through to the kernel)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            seccomp.install()
            libc = ctypes.CDLL(None, use_errno=True)
            found = {}
            for name, args in calls.items():
                ctypes.set_errno(0)
                result = libc.syscall(ctypes.c_long(NUMBERS[name]), *(ctypes.c_long(a) for a in args))
                found[name] = ctypes.get_errno() if result == -1 else 0
            os.write(write_fd, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_calls_outside_a_sandboxs_needs_are_refused() -> None:
    refused = [name for name in ("io_uring_setup", "kcmp", "pidfd_getfd", "move_pages", "ptrace", "unshare")]
    if platform.machine() == "x86_64":
        refused.append("modify_ldt")
    # Arguments that would make each call harmless or fail fast if it reached the kernel.
    got = _errnos_under_filter({name: (0, 0, 0) for name in refused} | {"clone3": (0, 0, 0)})
    assert {name: got[name] for name in refused} == {name: errno.EPERM for name in refused}
    assert got["clone3"] == errno.ENOSYS  # libc falls back to clone


def test_personality_and_socket_pass_only_for_what_dockers_profile_allows() -> None:
    read_implies_exec, query = 0x0400000, 0xFFFFFFFF
    got = _errnos_under_filter(
        {
            "personality": (query,),
            "socket": (socket.AF_UNIX, socket.SOCK_STREAM, 0),
        }
    )
    assert got == {"personality": 0, "socket": 0}
    got = _errnos_under_filter({"personality": (read_implies_exec,), "socket": (40, socket.SOCK_STREAM, 0)})
    assert got == {"personality": errno.EPERM, "socket": errno.EPERM}  # AF_VSOCK
    got = _errnos_under_filter({"socket": (38, socket.SOCK_SEQPACKET, 0)})  # AF_ALG
    assert got == {"socket": errno.EPERM}


def test_clone_is_refused_namespace_flags_only() -> None:
    new_user_namespace = 0x10000000
    got = _errnos_under_filter({"clone": (new_user_namespace | 17, 0, 0)})  # | SIGCHLD
    assert got == {"clone": errno.EPERM}
    # A plain fork through the filter still works.
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        seccomp.install()
        child = os.fork()
        if child == 0:
            os._exit(7)
        os._exit(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]))
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    os.close(read_fd)
    os.close(write_fd)


def test_the_filters_numbers_are_the_kernel_headers() -> None:
    header = {
        "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        "aarch64": Path("/usr/include/asm-generic/unistd.h"),
    }[platform.machine()]
    if not header.exists():
        pytest.skip(f"no kernel headers at {header}")
    table = dict(
        (m.group(1), int(m.group(2))) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", header.read_text())
    )
    wrong = {name: (number, table[name]) for name, number in NUMBERS.items() if name in table and table[name] != number}
    assert not wrong
    missing = [name for name in seccomp.DENIED if name in table and name not in NUMBERS]
    assert not missing, f"denied but not numbered here: {missing}"
