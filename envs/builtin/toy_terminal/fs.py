"""The toy terminal's world: a fixed five-file directory and a read-only pretend shell over it.

`execute(command)` returns exactly what GNU coreutils print for the same command over the
same files, with stderr merged into stdout in the order a terminal shows it (`bash -c
'cmd' 2>&1` with LC_ALL=C; the tests check this against the real tools). Every output
line ends with a newline. Commands:

    ls [FILE...]                  one name per line, sorted
    cat FILE...
    grep [-cinv] PATTERN FILE     PATTERN is a plain substring, not a regular expression
    wc [-lwc] FILE                GNU format: counts in the order lines, words, bytes, each
                                  right-aligned to the digit count of the file's byte size and
                                  joined by one space, then the name (` 12  98 675 app.log`);
                                  a single count is not padded (`12 app.log`)
    head [-n N] FILE, tail [-n N] FILE    N is a non-negative integer; default 10

One file per grep/wc/head/tail. There are no pipes, redirections or command lists; an
unknown command prints `unknown command: NAME`. Pure functions over constants: the same
command always gives the same bytes, which is what makes the outputs learnable.
"""

from __future__ import annotations

import getopt
import shlex
from collections.abc import Callable

FILES: dict[str, str] = {
    "app.log": """\
2024-03-11 08:00:01 INFO server started on port 8080
2024-03-11 08:00:02 INFO connected to database orders_db
2024-03-11 08:05:17 WARN slow query on table orders (1532 ms)
2024-03-11 08:07:44 INFO user alice logged in
2024-03-11 08:09:03 ERROR payment gateway timeout for order 1042
2024-03-11 08:09:05 INFO retrying payment for order 1042
2024-03-11 08:09:09 ERROR payment gateway timeout for order 1042
2024-03-11 08:12:30 INFO user bob logged in
2024-03-11 08:15:00 WARN disk usage at 85% on /var
2024-03-11 08:20:41 ERROR failed to send email to carol@example.com
2024-03-11 08:22:10 INFO user alice logged out
2024-03-11 08:30:00 INFO nightly backup scheduled for 02:00
""",
    "server.log": """\
[2024-03-11 09:00:00] GET /api/orders 200 12ms
[2024-03-11 09:00:03] GET /api/users/7 200 8ms
[2024-03-11 09:00:07] POST /api/orders 201 45ms
[2024-03-11 09:01:12] GET /api/orders/1042 404 3ms
[2024-03-11 09:01:30] POST /api/login 401 15ms
[2024-03-11 09:02:45] GET /api/health 200 1ms
[2024-03-11 09:03:10] POST /api/payments 500 2003ms
[2024-03-11 09:04:00] GET /api/orders 200 10ms
""",
    "config.yaml": """\
app:
  name: orderly
  version: 2.4.1
  debug: false
server:
  host: 0.0.0.0
  port: 8080
  workers: 4
database:
  url: postgres://db.internal:5432/orders_db
  pool_size: 10
""",
    "users.csv": """\
id,name,email,role,active
1,alice,alice@example.com,admin,true
2,bob,bob@example.com,developer,true
3,carol,carol@example.com,developer,false
4,dave,dave@example.com,viewer,true
5,erin,erin@example.com,admin,false
6,frank,frank@example.com,viewer,true
""",
    "notes.txt": """\
TODO: rotate the API keys before Friday
TODO: ask carol why email delivery fails
The backup job runs at 02:00 every night.
Port 8080 is the public port; 9090 is for metrics.
Remember: the admin users are alice and erin.
""",
}
"""File name -> content. ASCII only, so characters and bytes count the same."""

_OPERATOR_CHARS = frozenset("();<>|&")


class _Failure(Exception):
    """A command failed before producing output; the message is its one-line error."""


def execute(command: str) -> str:
    """The terminal output of one command line (see the module docstring)."""
    try:
        argv = _split(command)
    except _Failure as e:
        return f"{e}\n"
    if not argv:
        return ""
    handler = _COMMANDS.get(argv[0])
    if handler is None:
        return f"unknown command: {argv[0]}\n"
    try:
        return handler(argv[1:])
    except _Failure as e:
        return f"{e}\n"


def _split(command: str) -> list[str]:
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        argv = list(lexer)
    except ValueError as e:  # shlex's only error: an unterminated quote or escape
        raise _Failure(f"syntax error: {e}") from None
    # With punctuation_chars, shlex returns each bare run of operator characters as its own token.
    if any(token and set(token) <= _OPERATOR_CHARS for token in argv):
        raise _Failure("syntax error: pipes, redirections and command lists are not supported")
    return argv


def _options(prog: str, args: list[str], spec: str) -> tuple[dict[str, str], list[str]]:
    try:
        pairs, operands = getopt.gnu_getopt(args, spec)
    except getopt.GetoptError as e:
        if "requires argument" in e.msg:
            raise _Failure(f"{prog}: option requires an argument -- '{e.opt}'") from None
        if len(e.opt) > 1:
            raise _Failure(f"{prog}: unrecognized option '--{e.opt}'") from None
        raise _Failure(f"{prog}: invalid option -- '{e.opt}'") from None
    return {flag.lstrip("-"): value for flag, value in pairs}, operands


def _one_file(prog: str, operands: list[str]) -> str:
    if not operands:
        raise _Failure(f"{prog}: missing file operand")
    if len(operands) > 1:
        raise _Failure(f"{prog}: extra operand '{operands[1]}' (this shell takes one FILE)")
    return operands[0]


def _missing(prog: str, name: str) -> str:
    if prog in ("head", "tail"):
        return f"{prog}: cannot open '{name}' for reading: No such file or directory"
    if prog == "ls":
        return f"ls: cannot access '{name}': No such file or directory"
    return f"{prog}: {name}: No such file or directory"


def _read(prog: str, name: str) -> str:
    if name not in FILES:
        raise _Failure(_missing(prog, name))
    return FILES[name]


def _ls(args: list[str]) -> str:
    _, operands = _options("ls", args, "")
    if not operands:
        return "".join(f"{name}\n" for name in sorted(FILES))
    # ls reports missing names on stderr first; found names follow from its buffered stdout.
    errors = [f"{_missing('ls', n)}\n" for n in operands if n not in FILES]
    return "".join(errors) + "".join(f"{n}\n" for n in sorted(set(operands) & set(FILES)))


def _cat(args: list[str]) -> str:
    _, operands = _options("cat", args, "")
    if not operands:
        raise _Failure("cat: missing file operand")
    return "".join(FILES[n] if n in FILES else f"{_missing('cat', n)}\n" for n in operands)


def _grep(args: list[str]) -> str:
    flags, operands = _options("grep", args, "cinv")
    if len(operands) < 2:
        raise _Failure("usage: grep [-cinv] PATTERN FILE")
    pattern, name = operands[0], _one_file("grep", operands[1:])
    fold = (lambda s: s.lower()) if "i" in flags else (lambda s: s)
    hits = [
        (number, line)
        for number, line in enumerate(_read("grep", name).splitlines(keepends=True), start=1)
        if (fold(pattern) in fold(line)) != ("v" in flags)
    ]
    if "c" in flags:
        return f"{len(hits)}\n"
    return "".join(f"{number}:{line}" if "n" in flags else line for number, line in hits)


def _wc(args: list[str]) -> str:
    flags, operands = _options("wc", args, "lwc")
    name = _one_file("wc", operands)
    text = _read("wc", name)
    counts = {"l": text.count("\n"), "w": len(text.split()), "c": len(text.encode())}
    shown = [counts[k] for k in "lwc" if k in flags or not flags]
    width = 1 if len(shown) == 1 else len(str(counts["c"]))
    return " ".join(str(n).rjust(width) for n in shown) + f" {name}\n"


def _line_count(prog: str, flags: dict[str, str]) -> int:
    raw = flags.get("n", "10")
    if not raw.isdigit():
        raise _Failure(f"{prog}: invalid number of lines: '{raw}'")
    return int(raw)


def _head(args: list[str]) -> str:
    flags, operands = _options("head", args, "n:")
    count = _line_count("head", flags)
    lines = _read("head", _one_file("head", operands)).splitlines(keepends=True)
    return "".join(lines[:count])


def _tail(args: list[str]) -> str:
    flags, operands = _options("tail", args, "n:")
    count = _line_count("tail", flags)
    lines = _read("tail", _one_file("tail", operands)).splitlines(keepends=True)
    return "".join(lines[max(len(lines) - count, 0) :])


_COMMANDS: dict[str, Callable[[list[str]], str]] = {
    "ls": _ls,
    "cat": _cat,
    "grep": _grep,
    "wc": _wc,
    "head": _head,
    "tail": _tail,
}
