"""Linux namespace, mount and rlimit primitives for local sandboxes (libc via ctypes).

Python 3.11 has no `os.unshare`, so the few syscalls needed are called through libc.
Everything here runs inside a freshly forked, single-threaded child.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import resource
import signal
import socket
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
SANDBOX_NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


MNT_DETACH = 0x2


def mount_tmpfs(path: str, *, size_kb: int, uid: int, gid: int, flags: int = 0) -> None:
    """A size-limited tmpfs at `path`, owned by uid:gid, mode 0700: what a sandbox writes there
    is bounded in total, and lives in memory (charged to the writer's cgroup), not on a disk."""
    data = f"size={size_kb}k,mode=0700,uid={uid},gid={gid}"
    mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | flags, data)


def unmount(path: str) -> None:
    """Detach whatever is mounted at `path`; nothing when it is not a mount point (or is gone),
    or when we are not root (then we mounted nothing on the host, and umount2 says EPERM)."""
    if os.geteuid() != 0:
        return
    if _libc.umount2(os.fsencode(path), ctypes.c_int(MNT_DETACH)) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"umount {path}: {os.strerror(err)}")


def die_with_parent() -> None:
    """SIGKILL this process when its parent exits (checked right after, to close the race)."""
    parent = os.getppid()
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    if os.getppid() != parent:
        os._exit(1)


def no_new_privileges() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")


def map_current_user() -> None:
    """Inside a new user namespace, become uid/gid 0 mapped to the caller's own ids."""
    uid, gid = os.getuid(), os.getgid()
    unshare(CLONE_NEWUSER | SANDBOX_NAMESPACES)
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def hidden_ancestor(path: str) -> str | None:
    """The topmost ancestor of `path` that other users cannot traverse (e.g. a 0700 /root)."""
    current = ""
    for part in os.path.abspath(path).split(os.sep)[1:-1]:
        current += os.sep + part
        try:
            if not os.stat(current).st_mode & 0o001:
                return current
        except FileNotFoundError:
            return None
    return None


def _outermost(paths: list[str]) -> list[str]:
    absolute = sorted({os.path.abspath(p) for p in paths if os.path.exists(p)})
    return [p for p in absolute if not any(p.startswith(q + os.sep) for q in absolute if q != p)]


def private_view(keep: list[str], *, tmp_size_mb: int, open_private_homes: bool) -> None:
    """Give the sandbox its own view of the filesystem, in its new mount namespace.

    Mounts this PID namespace's /proc, covers the shared scratch directories (/tmp,
    /var/tmp, /dev/shm) with fresh size-limited tmpfs, and, for an unprivileged sandbox
    user, covers private ancestors (say a 0700 /root holding a pyenv Python) with an
    empty tmpfs too. The `keep` paths under anything covered (the sandbox's own run
    and work directories, the interpreter) are bound back at their original paths, so
    nothing else of those directories is visible. Sources are held open with O_PATH
    file descriptors, because once a directory is covered its old contents have no path.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    covers = {d: "mode=1777" for d in SHARED_DIRS if os.path.isdir(d)}
    kept = _outermost(keep)
    if open_private_homes:
        for path in kept:
            ancestor = hidden_ancestor(path)
            if ancestor is not None:
                covers[ancestor] = "mode=0755"
    # A private directory inside a covered one (a 0700 `mktemp -d` under /tmp) is hidden by the
    # outer tmpfs already, and no longer exists to be mounted on once that is in place.
    covers = {d: mode for d, mode in covers.items() if not any(d.startswith(c + os.sep) for c in covers)}
    held = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in kept if any(p.startswith(c + os.sep) for c in covers)]
    for directory, mode in sorted(covers.items()):
        mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"{mode},size={tmp_size_mb}m")
    for path, fd in held:
        os.makedirs(path, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)


def loopback_up() -> None:
    """Bring up `lo` in the new network namespace, its only interface (it starts down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH", got[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


RLIMITS = {
    "cpu_s": resource.RLIMIT_CPU,
    "file_bytes": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
    "address_space_bytes": resource.RLIMIT_AS,
}


def apply_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        resource.setrlimit(RLIMITS[name], (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def namespaces_usable(as_root: bool) -> str | None:
    """None if a child can create the sandbox namespaces here, else why not."""
    pid = os.fork()
    if pid == 0:
        try:
            map_current_user() if not as_root else unshare(SANDBOX_NAMESPACES)
            os._exit(0)
        except OSError as e:
            os._exit(10 + (e.errno or 0) % 100)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 0:
        return None
    return f"unshare failed (errno {code - 10}: {os.strerror(code - 10)})" if code >= 10 else f"probe exited {code}"
