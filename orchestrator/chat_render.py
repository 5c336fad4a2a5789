"""Chat-template renderer: an episode inside a Hugging Face chat template, append-only.

At construction the template is rendered for a few sentinel conversations; string
differences between those renders give the markup around each kind of message content.
Each markup piece is tokenized once and cached. During an episode the renderer only
appends: cached markup (SCAFFOLD), content tokenized once when added (PROMPT, ENV,
WARNING), and the policy's sampled ids verbatim (ACTION). For a ChatML template:

    <|im_start|>system\\n                     SCAFFOLD
    You are a terminal agent.                PROMPT
    <|im_end|>\\n<|im_start|>user\\n           SCAFFOLD
    Fix the failing test.                    PROMPT
    <|im_end|>\\n<|im_start|>assistant\\n      SCAFFOLD   (generation prompt)
    cat app.log<|im_end|>                    ACTION     (sampled; the end-of-turn token stops sampling)
    \\n<|im_start|>user\\n                     SCAFFOLD
    {command output}                         ENV
    <|im_end|>\\n<|im_start|>assistant\\n      SCAFFOLD   ...

The construction then drives the renderer through two three-round episodes with other
contents and checks, after every step, that the decoded transcript equals the template's
own render of the same conversation. A template that is not append-only (it rewrites
earlier assistant turns, numbers turns, renders the generation prompt differently from an
assistant header in history, transforms content) raises `TemplateMismatchError` there,
never halfway through a run.

The ids differ from what the template's `tokenize=True` gives: each piece is tokenized on
its own, so BPE never merges across a piece boundary. That is intended: the policy
conditions on exactly these ids, when sampling and in training. Content is tokenized with
special tokens split, so an observation that prints `<|im_end|>` stays text and cannot
close a turn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import TemplateError

from hillclimb.errors import HillclimbError
from orchestrator.render import Transcript
from trainers.roles import Role
from trainers.tokenizer import HFTokenizer

__all__ = ["ChatTemplateRenderer", "TemplateMismatchError"]

ObservationRole = Literal["user", "tool"]

# Plain ASCII (no whitespace, no markup characters) so no template mistakes them for anything.
_SYSTEM, _PROMPT, _ASSISTANT, _MESSAGE = (
    "hcSentinelSystem7f3",
    "hcSentinelPrompt7f3",
    "hcSentinelAction7f3",
    "hcSentinelMessage7f3",
)
_PAD = " \n"
"""Whitespace around a sentinel, to learn whether the template strips content."""


class TemplateMismatchError(HillclimbError, ValueError):
    """The chat template cannot be rendered append-only; the message says what differs and where."""


@dataclass(frozen=True)
class _Slot:
    """Cached markup around one kind of message that follows an assistant turn."""

    before: list[int]
    """After the end-of-turn token, up to the content."""
    after: list[int]
    """After the content, up to and including the next generation prompt."""
    strip: bool
    """The template strips this content, so the renderer does too."""


class ChatTemplateRenderer:
    """Renders start/action/observation/warning turns inside `tokenizer.hf.chat_template`.

    Observations are `observation_role` messages; warnings are always `user` messages (the
    harness speaking, not a tool reply). `end_of_turn` names the token that closes an
    assistant turn when it cannot be found as the added token the template writes right
    after assistant content. `template_kwargs` go to the template (e.g. `enable_thinking`).
    """

    def __init__(
        self,
        tokenizer: HFTokenizer,
        system_prompt: str | None = None,
        observation_role: ObservationRole = "user",
        *,
        end_of_turn: str | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if observation_role not in ("user", "tool"):
            raise ValueError(f"observation_role must be 'user' or 'tool', not {observation_role!r}")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.observation_role = observation_role
        self._template_kwargs = dict(template_kwargs or {})
        self._derive(end_of_turn)
        self._verify()

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self._eot, self.tokenizer.eos_token_id)))

    def start(self, prompt: str) -> Transcript:
        transcript = Transcript()
        transcript.extend(self._head, Role.SCAFFOLD)
        if self._system_ids is not None:
            transcript.extend(self._system_ids, Role.PROMPT)
            transcript.extend(self._system_to_prompt, Role.SCAFFOLD)
        transcript.extend(self._content(prompt, self._prompt_strip), Role.PROMPT)
        transcript.extend(self._generation_prompt, Role.SCAFFOLD)
        return transcript

    def add_action(self, transcript: Transcript, ids: tuple[int, ...], logprobs: tuple[float, ...]) -> None:
        transcript.extend(ids, Role.ACTION, logprobs)
        if not ids or ids[-1] != self._eot:
            transcript.extend([self._eot], Role.SCAFFOLD)  # cut by the length limit: close the turn anyway

    def add_observation(self, transcript: Transcript, text: str) -> None:
        self._add_message(transcript, self._observation, text, Role.ENV)

    def add_warning(self, transcript: Transcript, text: str) -> None:
        self._add_message(transcript, self._warning, text, Role.WARNING)

    def _add_message(self, transcript: Transcript, slot: _Slot, text: str, role: Role) -> None:
        if not transcript.ids or transcript.ids[-1] != self._eot:
            raise ValueError(
                "a message must follow an action: call add_action first (the transcript does not end a turn)"
            )
        transcript.extend(slot.before, Role.SCAFFOLD)
        transcript.extend(self._content(text, slot.strip), role)
        transcript.extend(slot.after, Role.SCAFFOLD)

    def _content(self, text: str, strip: bool) -> list[int]:
        text = text.strip() if strip else text
        return list(self.tokenizer.hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    # --- construction: learn the markup from sentinel renders -------------------------------

    def _render(self, messages: list[dict[str, str]]) -> str:
        """The template's text for `messages`, up to and including the next generation prompt."""
        try:
            text = self.tokenizer.hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **self._template_kwargs
            )
        except (TemplateError, ValueError) as e:
            roles = [m["role"] for m in messages]
            raise TemplateMismatchError(f"the chat template failed to render roles {roles}: {e}") from e
        return str(text)

    def _derive(self, end_of_turn: str | None) -> None:
        system = None if self.system_prompt is None else _SYSTEM
        first = self._derive_first_turn(system)
        markup = {
            role: self._derive_markup(first, role, system) for role in dict.fromkeys((self.observation_role, "user"))
        }
        eot_text, self._eot = self._end_of_turn(end_of_turn, markup)
        slots = {}
        for role, (between, after) in markup.items():
            strip = self._strips(
                lambda c, r=role: _conversation(_PROMPT, [(_ASSISTANT, r, c)], system),
                _MESSAGE,
                f"a {role} message",
            )
            slots[role] = _Slot(self.tokenizer.encode(between[len(eot_text) :]), self.tokenizer.encode(after), strip)
        self._observation, self._warning = slots[self.observation_role], slots["user"]

    def _derive_first_turn(self, system: str | None) -> str:
        """Cache the markup of (system +) first user message + generation prompt; return its sentinel render."""
        first = self._render(_conversation(_PROMPT, [], system))
        pieces = _split(first, [_SYSTEM, _PROMPT] if system else [_PROMPT], "the first user turn")
        self._head = self.tokenizer.encode(pieces[0])
        self._system_to_prompt = self.tokenizer.encode(pieces[1]) if system else []
        self._generation_prompt = self.tokenizer.encode(pieces[-1])
        self._prompt_strip = self._strips(lambda c: _conversation(c, [], system), _PROMPT, "the prompt")
        self._system_ids: list[int] | None = None
        if self.system_prompt is not None:
            system_strip = self._strips(lambda c: _conversation(_PROMPT, [], c), _SYSTEM, "the system prompt")
            self._system_ids = self._content(self.system_prompt, system_strip)
        return first

    def _derive_markup(self, first: str, role: str, system: str | None) -> tuple[str, str]:
        """The markup from an assistant's content to a `role` message's, and from it to the next generation prompt."""
        render = self._render(_conversation(_PROMPT, [(_ASSISTANT, role, _MESSAGE)], system))
        if not render.startswith(first):
            raise _mismatch(
                f"appending an assistant reply and a {role} message changes the render before it",
                first,
                render,
                ("up to the generation prompt the template renders", "with the turn appended it renders"),
            )
        lead, between, after = _split(render[len(first) :], [_ASSISTANT, _MESSAGE], f"a {role} turn")
        if lead:
            raise TemplateMismatchError(
                f"the template writes {lead!r} between the generation prompt and the assistant's content; "
                "the renderer needs the sampled text to start right after the generation prompt"
            )
        return between, after

    def _strips(self, conversation: Callable[[str], list[dict[str, str]]], sentinel: str, what: str) -> bool:
        """Whether the template strips whitespace around `sentinel`'s content (False: verbatim)."""
        plain = self._render(conversation(sentinel))
        padded = self._render(conversation(_PAD + sentinel + _PAD))
        if padded == plain.replace(sentinel, _PAD + sentinel + _PAD):
            return False
        if padded == plain:
            return True
        raise _mismatch(
            f"the template transforms {what} beyond stripping whitespace",
            plain.replace(sentinel, _PAD + sentinel + _PAD),
            padded,
            ("kept verbatim it would render", "with whitespace around the content it renders"),
        )

    def _end_of_turn(self, end_of_turn: str | None, markup: dict[str, tuple[str, str]]) -> tuple[str, int]:
        """The added token the template writes right after an assistant's content."""
        added = self.tokenizer.hf.get_added_vocab()
        betweens = [between for between, _ in markup.values()]
        if end_of_turn is None:
            found = [token for token in added if all(b.startswith(token) for b in betweens)]
            if not found:
                raise TemplateMismatchError(
                    f"no added token starts the markup after an assistant's content ({betweens[0]!r}), so no "
                    "end-of-turn token stops sampling; pass end_of_turn= if the template has one"
                )
            end_of_turn = max(found, key=len)
        ids = self.tokenizer.encode(end_of_turn)
        if len(ids) != 1 or not all(b.startswith(end_of_turn) for b in betweens):
            raise TemplateMismatchError(
                f"end_of_turn {end_of_turn!r} must be one token (it is {ids}) that the template writes right after "
                f"an assistant's content (it writes {betweens[0]!r})"
            )
        return end_of_turn, ids[0]

    def _verify(self) -> None:
        """Drive the renderer through two episodes; after each step, compare with the template's render."""
        prompt = "Fix the failing test in /srv/app.\nUse one shell command per turn."
        actions = ["ls -la", "cat app.log && echo done", "pytest -q"]
        messages = {
            "obs": "total 8\n-rw-r--r-- 1 root root 12 café.log\n",
            "warn": "Unparseable action: expected one command.",
        }
        for kinds in (("obs", "warn", "obs"), ("warn", "obs", "warn")):
            transcript = self.start(prompt)
            turns: list[tuple[str, str, str]] = []
            self._compare(transcript, turns, prompt)
            for i, (kind, action) in enumerate(zip(kinds, actions, strict=True)):
                ids = self._content(action, strip=False)
                ids += [] if i == 1 else [self._eot]  # the middle action is cut by the length limit
                self.add_action(transcript, tuple(ids), (0.0,) * len(ids))
                text = messages[kind]
                (self.add_observation if kind == "obs" else self.add_warning)(transcript, text)
                turns.append((action, self.observation_role if kind == "obs" else "user", text))
                self._compare(transcript, turns, prompt)

    def _compare(self, transcript: Transcript, turns: list[tuple[str, str, str]], prompt: str) -> None:
        expected = self._render(_conversation(prompt, turns, self.system_prompt))
        built = self.tokenizer.decode(transcript.ids)
        if built != expected:
            raise _mismatch(
                f"after {len(turns)} turn(s) the renderer's transcript differs from the template's render",
                expected,
                built,
            )


def _conversation(prompt: str, turns: list[tuple[str, str, str]], system: str | None) -> list[dict[str, str]]:
    """`turns`: (assistant text, message role, message content) after the first user message."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    messages.append({"role": "user", "content": prompt})
    for action, role, content in turns:
        messages += [{"role": "assistant", "content": action}, {"role": role, "content": content}]
    return messages


_LABELS = ("the template renders", "the append-only transcript decodes to")


def _split(text: str, sentinels: list[str], what: str) -> list[str]:
    """The markup around `sentinels`, which must occur once each, in order: len(sentinels) + 1 pieces."""
    pieces, rest = [], text
    for sentinel in sentinels:
        if text.count(sentinel) != 1 or sentinel not in rest:
            raise TemplateMismatchError(
                f"rendering {what}, the template does not write the message content verbatim once "
                f"(looked for {sentinel!r} in {text!r}); content it rewrites, drops or repeats cannot be appended"
            )
        head, rest = rest.split(sentinel, 1)
        pieces.append(head)
    return [*pieces, rest]


def _mismatch(what: str, expected: str, got: str, labels: tuple[str, str] = _LABELS) -> TemplateMismatchError:
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    window = slice(max(0, at - 40), at + 40)
    return TemplateMismatchError(
        f"{what}: they differ from character {at}: {labels[0]} {expected[window]!r}, {labels[1]} {got[window]!r}",
        expected=expected,
        got=got,
    )
