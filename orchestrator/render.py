"""Renderers: an episode as the policy sees it, built token by token with a role per token.

A renderer appends; it never re-renders history. The policy's sampled ids go in
verbatim (`add_action`); every other piece of text is tokenized once, when it is added.
So the ids a learner trains on are exactly the ids the policy conditioned on — the
multi-turn token drift peers suffer from cannot happen here.

`PlainTextRenderer` is a transcript of turns, one action a line; for a shell environment
(`envs.authoring.tasks.ShellSuite`) each action follows the shell's prompt, as in a terminal:

    <bos>{task prompt}\\n          PROMPT (bos: SCAFFOLD)
    $                              SCAFFOLD (the shell's prompt; nothing for other environments)
    cat app.log\\n                 ACTION   (sampled, up to and including the stop token)
    {command output}               ENV
    $                              SCAFFOLD ...

The chat-template renderer (`orchestrator.chat_render`) does the same inside a Hugging
Face chat template, with the template's markup marked SCAFFOLD.

`MessagesRenderer` serves policies behind a chat API, which apply their own template: it keeps
the episode as chat messages (`Transcript.messages`, what the request carries) and, beside them,
the text's UTF-8 bytes with their roles — an exact record of what was said, not model tokens:

    messages: [user: {task prompt}] [assistant: {action}] [user: {observation}] ...
    ids:       {prompt bytes} PROMPT  {action bytes} ACTION  {observation bytes} ENV ...

Where the model calls one of the environment's tools instead, the assistant message carries the
call (`tool_calls`), the observation answers it (a `tool` message with its id), and the ids hold
the action text the call became (the task suite's `tool_call_text`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from trainers.policy.base import ToolCall
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer, Tokenizer


@dataclass
class Transcript:
    """Ids, roles and sampling log-probs, always the same length."""

    ids: list[int] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    """The episode as chat messages; kept by `MessagesRenderer` only."""

    def extend(
        self, ids: list[int] | tuple[int, ...], role: Role, logprobs: list[float] | tuple[float, ...] | None = None
    ) -> None:
        if logprobs is not None and len(logprobs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(logprobs)} logprobs")
        self.ids.extend(ids)
        self.roles.extend([int(role)] * len(ids))
        self.logprobs.extend(logprobs if logprobs is not None else [0.0] * len(ids))

    def __len__(self) -> int:
        return len(self.ids)


class Renderer(Protocol):
    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        """Sampling stops after any of these: they close an action."""
        ...

    def start(self, prompt: str) -> Transcript:
        """The transcript up to the first generation point."""
        ...

    def add_action(self, transcript: Transcript, ids: tuple[int, ...], logprobs: tuple[float, ...]) -> None:
        """The policy's sampled ids, verbatim."""
        ...

    def add_observation(self, transcript: Transcript, text: str) -> None:
        """The environment's output, then whatever leads to the next generation point."""
        ...

    def add_warning(self, transcript: Transcript, text: str) -> None:
        """A harness message (e.g. an unparseable action), then the next generation point."""
        ...


class PlainTextRenderer:
    """Actions and observations as plain text for any tokenizer (the tiny model's default);
    `action_prompt` (a shell's `$ `, else empty) opens each turn, and `preamble` (a skill)
    precedes the task prompt."""

    def __init__(
        self, tokenizer: Tokenizer, bos_token_id: int | None = None, *, action_prompt: str, preamble: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self._bos = bos_token_id
        self._preamble = preamble
        self._mark = tokenizer.encode(action_prompt)
        newline = tokenizer.encode("\n")
        if len(newline) != 1:
            raise ValueError("PlainTextRenderer needs a tokenizer with a single-token newline (actions end at it)")
        self._newline = newline

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return (self._newline[0], self.tokenizer.eos_token_id)

    def start(self, prompt: str) -> Transcript:
        transcript = Transcript()
        if self._bos is not None:
            transcript.extend([self._bos], Role.SCAFFOLD)
        if self._preamble:  # a skill, as a system message would hold it: before the task
            transcript.extend(self.tokenizer.encode(self._preamble.rstrip("\n") + "\n\n"), Role.PROMPT)
        transcript.extend(self.tokenizer.encode(prompt.rstrip("\n") + "\n"), Role.PROMPT)
        transcript.extend(self._mark, Role.SCAFFOLD)
        return transcript

    def add_action(self, transcript: Transcript, ids: tuple[int, ...], logprobs: tuple[float, ...]) -> None:
        transcript.extend(ids, Role.ACTION, logprobs)
        if not ids or ids[-1] not in self.stop_token_ids:
            transcript.extend(self._newline, Role.SCAFFOLD)  # a truncated action still ends its line

    def add_observation(self, transcript: Transcript, text: str) -> None:
        transcript.extend(self.tokenizer.encode(text), Role.ENV)
        if text and not text.endswith("\n"):
            transcript.extend(self._newline, Role.SCAFFOLD)
        transcript.extend(self._mark, Role.SCAFFOLD)

    def add_warning(self, transcript: Transcript, text: str) -> None:
        transcript.extend(self.tokenizer.encode(f"[harness] {text}\n"), Role.WARNING)
        transcript.extend(self._mark, Role.SCAFFOLD)


class MessagesRenderer:
    """Chat messages for a policy behind a chat API, with the text's bytes as the transcript."""

    WARNING_PREFIX = "[harness] "

    def __init__(self, system_prompt: str | None = None) -> None:
        self.tokenizer = ByteTokenizer()
        self._system = system_prompt

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return ()  # the server ends the assistant's turn itself

    def start(self, prompt: str) -> Transcript:
        transcript = Transcript()
        if self._system:
            self._say(transcript, "system", self._system, Role.PROMPT)
        self._say(transcript, "user", prompt, Role.PROMPT)
        return transcript

    def add_action(self, transcript: Transcript, ids: tuple[int, ...], logprobs: tuple[float, ...]) -> None:
        transcript.extend(ids, Role.ACTION, logprobs)
        transcript.messages.append({"role": "assistant", "content": self.tokenizer.decode(ids)})

    def add_tool_call(self, transcript: Transcript, call: ToolCall, content: str, action_text: str) -> None:
        """A reply that called a tool: the message as the model sent it, and the action text
        the call became as the transcript's ACTION bytes."""
        transcript.extend(self.tokenizer.encode(action_text), Role.ACTION)
        function = {"name": call.name, "arguments": call.arguments}
        message = {
            "role": "assistant",
            "content": content or None,
            "tool_calls": [{"id": call.id, "type": "function", "function": function}],
        }
        transcript.messages.append(message)

    def add_observation(self, transcript: Transcript, text: str) -> None:
        self._answer(transcript, text, Role.ENV)

    def add_warning(self, transcript: Transcript, text: str) -> None:
        self._answer(transcript, self.WARNING_PREFIX + text, Role.WARNING)

    def _answer(self, transcript: Transcript, text: str, token_role: Role) -> None:
        """What follows the model's turn: the result of the tool it called (chat APIs require
        each call answered by a `tool` message with its id), else a user message."""
        calls = transcript.messages[-1].get("tool_calls")
        if calls:
            transcript.extend(self.tokenizer.encode(text), token_role)
            transcript.messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": text})
        else:
            self._say(transcript, "user", text, token_role)

    def _say(self, transcript: Transcript, role: str, text: str, token_role: Role) -> None:
        transcript.extend(self.tokenizer.encode(text), token_role)
        transcript.messages.append({"role": role, "content": text})


def chat_tool(mcp_tool: dict[str, Any]) -> dict[str, Any]:
    """An MCP tool (`tools/list`: name, description, inputSchema) as a chat API's function tool."""
    function = {
        "name": mcp_tool["name"],
        "description": mcp_tool.get("description", ""),
        "parameters": mcp_tool.get("inputSchema") or {"type": "object", "properties": {}},
    }
    return {"type": "function", "function": function}
