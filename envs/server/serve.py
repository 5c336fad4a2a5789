"""Run one environment server until SIGTERM / SIGINT: the process a sandbox runs.

    python -m envs toy_terminal --uds /run/hillclimb/env.sock --token-file /run/hillclimb/token

Kept free of the CLI library so the sandbox image needs nothing but pydantic.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from envs.deadline import within
from envs.sandbox import seccomp, warden
from envs.sandbox.agent_commands import agent_commands
from envs.sandbox.warden import Identity, start_sandbox
from envs.server.env_server import EnvServer, ServerConfig
from envs.server.targets import runtime_for

TOKEN_ENV_VAR = "HILLCLIMB_ENV_TOKEN"

log = logging.getLogger("hillclimb.envs.serve")

T = TypeVar("T")


def read_token(token_file: str | None, *, consume: bool = False) -> str | None:
    """The bearer token from `token_file` or `$HILLCLIMB_ENV_TOKEN`; `consume` deletes the file after reading."""
    if token_file:
        with open(token_file) as f:
            token = f.read().strip()
        if consume:
            try:
                os.unlink(token_file)
            except OSError as e:
                # A read-only mount (a Kubernetes Secret volume) keeps it: there it sits in a
                # container the agent's commands do not run in.
                if e.errno != errno.EROFS:
                    raise
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    token = os.environ.get(TOKEN_ENV_VAR)
    _scrub_initial_environment(TOKEN_ENV_VAR)  # first: unsetenv drops libc's pointer to those bytes
    os.environ.pop(TOKEN_ENV_VAR, None)
    return token


def _scrub_initial_environment(name: str) -> None:
    """Zero `name`'s value where the kernel keeps this process's initial environment.

    `os.environ.pop` forgets the variable, but /proc/<pid>/environ shows the environment the
    process was started with, and anything running as the same user can read it. The bytes
    live in our own memory, where libc's `environ` still points (on glibc, until unsetenv)."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None)
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    prefix = name.encode() + b"="
    index = 0
    while (address := environ[index]) is not None:
        entry = ctypes.string_at(address)
        if entry.startswith(prefix):
            ctypes.memset(address + len(prefix), 0, len(entry) - len(prefix))
        index += 1


TLS_NEEDS_TCP = "--tls-cert is for TCP; a Unix socket is reached only from this machine"


def server_tls(cert: str, key: str | None = None) -> ssl.SSLContext:
    """A server-side TLS context from a PEM certificate chain and its key (default: the same file)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(
    target: str,
    *,
    token: str | None,
    host: str = "127.0.0.1",
    port: int = 0,
    uds: str | None = None,
    config: ServerConfig | None = None,
    on_ready: Callable[[str], None] | None = None,
    ttl_s: float | None = None,
    tls: ssl.SSLContext | None = None,
    claimable: bool = False,
    action: str | None = None,
    observation: str | None = None,
) -> None:
    """Serve `target` until cancelled, signalled, or `ttl_s` seconds have passed; `on_ready`
    gets the URL once listening. The TTL is the sandbox's own hard deadline: it holds even
    when the orchestrator that should have destroyed the sandbox is gone."""
    runtime = runtime_for(target, action=action, observation=observation)
    server = EnvServer(runtime, config, token=token, claimable=claimable)
    if os.environ.get(warden.SOCKET_ENV_VAR):  # a warden apart: connected before serving, so ready means it is there
        await asyncio.to_thread(agent_commands)
    if uds:
        await server.start_unix(uds)
        url = f"unix://{uds}"
    else:
        bound = await server.start_tcp(host, port, ssl=tls)
        url = f"{'wss' if tls else 'ws'}://{host}:{bound}/ws"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if on_ready:
        on_ready(url)
    try:
        await within(ttl_s, stop.wait())
    except TimeoutError:
        log.warning("time-to-live of %g s reached: shutting down", ttl_s)
    finally:
        await server.close()


LOOP_ENV_VAR = "HILLCLIMB_EVENT_LOOP"


def run_fast(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop where it is installed (its C event loop halves per-message
    overhead), unless `$HILLCLIMB_EVENT_LOOP=asyncio` asks for the standard loop."""
    try:
        if os.environ.get(LOOP_ENV_VAR) == "asyncio":
            raise ImportError
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m envs", description="Serve one environment over OpenEnv's protocol."
    )
    parser.add_argument(
        "target", help="built-in name, 'package.module:Class', or a module calling OpenEnv's create_app"
    )
    parser.add_argument("--action", help="the action class, 'package.module:Class' (when step() has no hint)")
    parser.add_argument("--observation", help="the observation class, 'package.module:Class'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--uds", help="listen on this Unix socket instead of TCP")
    parser.add_argument(
        "--token-file", help=f"file holding the bearer token (deleted after reading); else ${TOKEN_ENV_VAR}"
    )
    parser.add_argument("--no-auth", action="store_true", help="accept clients without a token")
    parser.add_argument(
        "--claim-token",
        action="store_true",
        help="take the token from the first POST /claim (servers started before any sandbox is asked for: a pool)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (wss://) on TCP")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert (default: in the same file)")
    parser.add_argument("--max-sessions", type=int, default=ServerConfig().max_sessions)
    parser.add_argument("--idle-timeout", type=float, default=ServerConfig().idle_timeout_s)
    parser.add_argument("--header-timeout", type=float, default=ServerConfig().header_timeout_s)
    parser.add_argument("--max-connections", type=int, default=ServerConfig().max_connections)
    parser.add_argument(
        "--http-sessions",
        choices=["keyed", "single"],
        default=ServerConfig().http_sessions,
        help="the HTTP binding's sessions: named by the Hillclimb-Session header, or one per server",
    )
    parser.add_argument(
        "--no-inline-sync-calls",
        action="store_true",
        help="keep a synchronous environment's every reset and step on its session's thread (envs.server.inline)",
    )
    parser.add_argument("--ttl", type=float, help="exit after this many seconds (the sandbox's hard time-to-live)")
    parser.add_argument(
        "--harden", action="store_true", help="install the sandbox's system call filter first (envs.sandbox.seccomp)"
    )
    parser.add_argument(
        "--server-user",
        type=Identity.parse,
        metavar="UID:GID[:GROUPS]",
        help="started as root: serve as this user, and be the warden of the agent's commands (needs --agent-user)",
    )
    parser.add_argument("--agent-user", type=Identity.parse, metavar="UID:GID", help="run the agent's commands as")
    parser.add_argument(
        "--verifier-user",
        type=Identity.parse,
        metavar="UID:GID",
        help="run what decides a reward as (envs.sandbox.verification)",
    )
    args = parser.parse_args(argv)
    users = (args.server_user, args.agent_user, args.verifier_user)
    if any(u is None for u in users) and any(u is not None for u in users):
        parser.error("--server-user, --agent-user and --verifier-user go together")
    if args.server_user is not None and len({u.uid for u in users}) != len(users):
        parser.error("--server-user, --agent-user and --verifier-user must be three different uids")
    if args.server_user is not None and os.geteuid() != 0:
        parser.error("--server-user needs to start as root (with CAP_SETUID, CAP_SETGID and CAP_KILL)")
    if args.harden:
        seccomp.install()
    if args.server_user is not None:
        identities = {"agent": args.agent_user, "verifier": args.verifier_user}
        start_sandbox(lambda: _serve_from_args(parser, args), server_user=args.server_user, identities=identities)
    _serve_from_args(parser, args)


def _serve_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.claim_token and (args.no_auth or args.token_file):
        parser.error("--claim-token takes the token from the claim: not with --token-file or --no-auth")
    token = None if args.no_auth or args.claim_token else read_token(args.token_file, consume=True)
    if token is None and not (args.no_auth or args.claim_token):
        parser.error(f"no token: pass --token-file, set ${TOKEN_ENV_VAR}, --claim-token, or --no-auth")
    if args.tls_cert and args.uds:
        parser.error(TLS_NEEDS_TCP)
    tls = server_tls(args.tls_cert, args.tls_key) if args.tls_cert else None
    config = ServerConfig(
        max_sessions=args.max_sessions,
        idle_timeout_s=args.idle_timeout,
        header_timeout_s=args.header_timeout,
        max_connections=args.max_connections,
        http_sessions=args.http_sessions,
        inline_sync_calls=not args.no_inline_sync_calls,
    )
    run_fast(
        serve(
            args.target,
            token=token,
            host=args.host,
            port=args.port,
            uds=args.uds,
            config=config,
            on_ready=lambda url: log.info("serving %s on %s", args.target, url),
            ttl_s=args.ttl,
            tls=tls,
            claimable=args.claim_token,
            action=args.action,
            observation=args.observation,
        )
    )
