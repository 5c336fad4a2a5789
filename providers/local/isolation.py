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
from dataclasses import dataclass

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


SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
"""What of the host a sandbox sees, read-only: programs, libraries and their configuration."""
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SANDBOX_RUN_DIR = "/run/hillclimb"
SANDBOX_WORKDIR = "/sandbox"
SANDBOX_VERIFY_DIR = "/verify"
SANDBOX_VERIFIER_SHELL = "/run/hillclimb-verifier/bash"

MS_RDONLY = 0x1
MS_REMOUNT = 0x20
_ST_LOCKED = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC}
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


@dataclass(frozen=True, slots=True)
class RootPlan:
    """The filesystem a sandbox sees: nothing of the host but what is listed here."""

    mount_point: str
    """An empty host directory to build the new root on (covered in the sandbox's namespace only)."""
    code: list[str]
    """Host paths the server needs (its interpreter and packages): read-only, at the same paths."""
    code_owner: int | None
    """The only uid that may enter the code's top directories (the server's); None: anyone."""
    run_dir: str
    """Host directory of the server's socket, seen at `SANDBOX_RUN_DIR`."""
    work_kb: int
    work_owner: int
    """`SANDBOX_WORKDIR` is a tmpfs of this size, owned by this uid (the agent's)."""
    verify_owner: int
    """`SANDBOX_VERIFY_DIR` is another, owned by this uid (the verifier's): where it copies the work dir."""
    verifier_shell: str | None
    """A host file bound read-only at `SANDBOX_VERIFIER_SHELL`: bash, execute-only (see `envs.sandbox.verification`)."""
    tmp_mb: int
    cgroups: list[str]
    """The sandbox's own cgroup directories: read-only at the same paths, so it can read its limits."""


def outermost(paths: list[str]) -> list[str]:
    """The existing `paths` that are not inside another of them."""
    absolute = sorted({os.path.abspath(p) for p in paths if os.path.exists(p)})
    return [p for p in absolute if not any(p.startswith(q + os.sep) for q in absolute if q != p)]


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory + os.sep)


def _bind(source: str, target: str, *, writable: bool = False) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    if writable:
        return
    # A remount must repeat the flags the source mount has locked (in a user namespace it may not drop them).
    locked = os.statvfs(target).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
    flags |= sum(ms for st, ms in _ST_LOCKED.items() if locked & st)
    mount(None, target, None, flags)


def _pivot_root(new_root: str) -> None:
    """Make `new_root` this mount namespace's root and detach the old one entirely."""
    number = _SYS_PIVOT_ROOT[os.uname().machine]
    os.chdir(new_root)
    os.mkdir(".old")
    _check(_libc.syscall(ctypes.c_long(number), b".", b".old"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.old", ctypes.c_int(MNT_DETACH)), "umount /.old")
    os.rmdir("/.old")


def _behind_owner(root: str, path: str, owner: int) -> bool:
    """Whether a directory above `path` in the new root is `owner`'s alone (made for code bound before)."""
    parent = os.path.dirname(path)
    while parent != "/":
        st = os.stat(root + parent)
        if st.st_uid == owner and not st.st_mode & 0o077:
            return True
        parent = os.path.dirname(parent)
    return False


def _bind_code(root: str, path: str, plan: RootPlan) -> None:
    """Bind `path` read-only at its own path; the first directory that had to be made for it
    becomes `code_owner`'s alone. Paths the new root already has (system directories, its
    own /tmp, `/`) or that hold the new root itself (a driver started in /tmp) are not bound."""
    if os.path.exists(root + path) or (plan.mount_point + os.sep).startswith(path.rstrip(os.sep) + os.sep):
        return
    made = root + path
    while not os.path.exists(os.path.dirname(made)):
        made = os.path.dirname(made)
    os.makedirs(root + path)
    if plan.code_owner is not None:
        if made != root + path:
            os.chown(made, plan.code_owner, -1)
            os.chmod(made, 0o700)
        elif not _behind_owner(root, path, plan.code_owner):  # e.g. code right under the sandbox's /tmp
            raise OSError(
                errno.EPERM,
                f"the server's code at {path} would be open to the agent: move it under a directory of its own",
            )
    _bind(path, root + path)


def enter_minimal_root(plan: RootPlan) -> None:
    """In a new mount namespace: replace the host's tree with a root of our own.

    The new root is a tmpfs holding the system directories (read-only binds), a few device
    nodes, this PID namespace's /proc, fresh /tmp, /var/tmp and /dev/shm, the server's
    socket dir at `SANDBOX_RUN_DIR`, the agent's work dir at `SANDBOX_WORKDIR`, the verifier's
    at `SANDBOX_VERIFY_DIR` and its shell, and the server's code at its own paths, under top
    directories only `code_owner` may enter.
    Host sockets, home directories, run ledgers and everything else have no path here."""
    for target in (SANDBOX_RUN_DIR, SANDBOX_WORKDIR, SANDBOX_VERIFY_DIR, os.path.dirname(SANDBOX_VERIFIER_SHELL)):
        if any(_under(p, target) for p in plan.code):
            raise OSError(errno.EINVAL, f"the server's code at {plan.code} overlaps the sandbox's {target}")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    root = plan.mount_point
    mount("tmpfs", root, "tmpfs", MS_NOSUID, "mode=0755,size=1m")
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), root + path)
        elif os.path.isdir(path):
            os.mkdir(root + path)
            _bind(path, root + path)
    os.makedirs(root + "/dev")
    for name in DEVICES:
        if os.path.exists(f"/dev/{name}"):
            open(f"{root}/dev/{name}", "w").close()
            mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, f"{root}/dev/{name}")
    os.symlink("/proc/self/fd/2", f"{root}/dev/stderr")
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        os.makedirs(root + path, exist_ok=True)
        mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={plan.tmp_mb}m")
    for group in plan.cgroups:
        os.makedirs(root + group)
        _bind(group, root + group)
    os.makedirs(root + SANDBOX_RUN_DIR)
    _bind(plan.run_dir, root + SANDBOX_RUN_DIR, writable=True)
    for path, owner in ((SANDBOX_WORKDIR, plan.work_owner), (SANDBOX_VERIFY_DIR, plan.verify_owner)):
        os.makedirs(root + path, exist_ok=True)
        mount_tmpfs(root + path, size_kb=plan.work_kb, uid=owner, gid=owner, flags=0)
    if plan.verifier_shell is not None:
        os.makedirs(root + os.path.dirname(SANDBOX_VERIFIER_SHELL))
        open(root + SANDBOX_VERIFIER_SHELL, "w").close()
        _bind(plan.verifier_shell, root + SANDBOX_VERIFIER_SHELL)
    for path in outermost(plan.code):
        _bind_code(root, path, plan)
    _pivot_root(root)
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID, "mode=0755,size=1m")


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


CAP_KILL, CAP_SETGID, CAP_SETUID = 5, 6, 7
WARDEN_CAPABILITIES = (CAP_KILL, CAP_SETGID, CAP_SETUID)
"""All a sandbox's PID 1 keeps: to start the server and the agent's commands under their uids, and kill them."""
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAPABILITY_VERSION_3 = 0x20080522


def keep_only_capabilities(keep: tuple[int, ...]) -> None:
    """Drop every other capability, from the bounding set too (so no exec can regain it)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            _check(_libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(CAPBSET_DROP, {cap})")
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(CAP_AMBIENT_CLEAR_ALL)")
    mask = sum(1 << cap for cap in keep)
    header = (ctypes.c_uint32 * 2)(_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)(mask, mask, 0, 0, 0, 0)  # effective, permitted, inheritable; x2 words
    _check(_libc.capset(header, data), "capset")


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
