"""Drill tasks: one templated question per (command form, file, argument), made from the files.

The hand-written tasks read like real questions; drills exist in bulk so that a policy's own
rollouts cover the shell's behaviour broadly — grep, grep -c / -n / -v, head, tail and wc over
every file — which is what the world-model (ECHO) term learns from. A drill names its command
("Run `grep -c WARN app.log`. ..."): what it tests is predicting and reading the output, not
guessing which command was meant, so even a small policy's own rollouts see the real outputs. A fixed ~15% of drill
commands are held out, along with every hand-written held-out command: held-out questions ask
for commands no training task ever ran.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator

from envs.builtin.toy_terminal.fs import FILES, execute

HELD_OUT_PERCENT = 15
PATTERNS_PER_FILE = 3
MAX_LINES = 4


def _lines(output: str) -> list[str]:
    return output.splitlines()


# form → (command template, question template, answer from the command's output)
FORMS: dict[str, tuple[str, str, Callable[[str], str]]] = {
    "grep": (
        "grep {arg} {file}",
        "How many lines of {file} contain {arg}? Print them to count.",
        lambda o: str(len(_lines(o))),
    ),
    "grep-c": ("grep -c {arg} {file}", "Count the lines of {file} that contain {arg}.", lambda o: o.strip()),
    "grep-n": (
        "grep -n {arg} {file}",
        "On which line of {file} does {arg} first appear?",
        lambda o: o.split(":", 1)[0],
    ),
    "grep-v": ("grep -v {arg} {file}", "How many lines of {file} do not contain {arg}?", lambda o: str(len(_lines(o)))),
    "head": (
        "head -n {arg} {file}",
        "What is the first word of line {arg} of {file}?",
        lambda o: _lines(o)[-1].split()[0],
    ),
    "tail": (
        "tail -n {arg} {file}",
        "What is the first word of line {arg} from the end of {file}?",
        lambda o: _lines(o)[0].split()[0],
    ),
    "wc-l": ("wc -l {file}", "How many lines does {file} have?", lambda o: o.split()[0]),
    "wc-w": ("wc -w {file}", "How many words does {file} have?", lambda o: o.split()[0]),
    "wc-c": ("wc -c {file}", "How many bytes is {file}?", lambda o: o.split()[0]),
}


def patterns(content: str) -> list[str]:
    """Words of a file to grep for: alphanumeric runs of 3+ characters, spread over the file."""
    words = sorted({w for w in re.findall(r"[A-Za-z0-9_]{3,}", content)})
    step = max(1, len(words) // PATTERNS_PER_FILE)
    return words[::step][:PATTERNS_PER_FILE]


def _arguments(form: str, content: str) -> list[str]:
    if form.startswith("grep"):
        return patterns(content)
    if form in ("head", "tail"):
        return [str(n) for n in range(1, min(MAX_LINES, len(_lines(content))) + 1)]
    return [""]


def drills() -> Iterator[tuple[str, str, str, str]]:
    """(id, command, question, answer) for every drill, in a fixed order."""
    for name, content in FILES.items():
        for form, (command_t, question_t, answer_of) in FORMS.items():
            for arg in _arguments(form, content):
                command = command_t.format(arg=arg, file=name)
                output = execute(command)
                if not output.strip():
                    continue  # nothing to ask about
                slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{form}-{name}-{arg}").strip("-").lower()
                question = f"Run `{command}`. " + question_t.format(arg=arg, file=name)
                yield f"drill-{slug}", command, question, answer_of(output)


def held_out(command: str) -> bool:
    """A stable ~HELD_OUT_PERCENT% of drill commands, by hash, independent of ordering."""
    return int(hashlib.sha256(command.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT
