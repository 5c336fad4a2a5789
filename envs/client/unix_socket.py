"""Connecting to a Unix socket that lives in a directory someone else can write.

A sandbox's socket sits in a directory its server (and so its agent) can write: the
agent may swap the socket for a symlink to any socket on the host, or for a hard link
to one, and whoever connects would hand that socket its request and bearer token. So
the last path component is opened without following links, checked to be a socket
with one name that belongs to us or to its directory's owner, and connected to through
that open file (`/proc/self/fd/N`) so that nothing can be swapped in between. (Where
there is no O_PATH, off Linux, the same checks run on the path just before connecting.)
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat

from hillclimb.errors import HillclimbError

_O_PATH = getattr(os, "O_PATH", 0)


class UnsafeSocketError(HillclimbError, ConnectionError):
    """The path is not a socket we may trust: a symlink, a hard link, another kind of file,
    or a socket owned by someone other than us or its directory's owner. Not retried: a
    planted link does not go away by waiting."""


def _checked_socket(path: str) -> tuple[str, int | None]:
    """Where to connect (`/proc/self/fd/N`, or the path itself without O_PATH) and the
    descriptor to close once connected, after the checks above."""
    directory, name = os.path.split(os.path.abspath(path))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    fd = None
    try:
        if _O_PATH:
            fd = os.open(name, _O_PATH | os.O_NOFOLLOW, dir_fd=dir_fd)
            info = os.fstat(fd)
        else:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        owner_of_dir = os.fstat(dir_fd).st_uid
    finally:
        os.close(dir_fd)
    why = None
    if not stat.S_ISSOCK(info.st_mode):
        why = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a socket"
    elif info.st_nlink != 1:
        why = f"a socket with {info.st_nlink} names (a hard link)"
    elif info.st_uid not in (os.geteuid(), owner_of_dir):
        why = f"a socket owned by uid {info.st_uid}, neither ours nor its directory's owner ({owner_of_dir})"
    if why is not None:
        if fd is not None:
            os.close(fd)
        raise UnsafeSocketError(f"refusing to connect to {path}: it is {why}")
    return (f"/proc/self/fd/{fd}" if fd is not None else path), fd


async def connect_unix(path: str) -> socket.socket:
    """A connected, non-blocking stream socket to the server at `path` (see the module doc)."""
    target, fd = _checked_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    finally:
        if fd is not None:
            os.close(fd)
    return sock
