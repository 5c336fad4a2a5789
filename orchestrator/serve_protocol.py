"""What `hillclimb model serve` accepts and how it refuses: OpenAI's request bodies as strict
pydantic models, and every refusal as OpenAI's error body.

    body bytes ─► orjson ─► drop OpenAI fields that carry their no-op value ─► ChatRequest / CompletionRequest
                   │ bad JSON            │ such a field with another value      │ unknown field, wrong type
                   └──────────────► APIError(400, message naming the field) ◄──┘

Unknown fields are refused (a misspelt `max_token` must not silently mean "no limit"). Fields
OpenAI knows but this engine cannot honour (`logit_bias`, penalties, `stream`, ...) are accepted
only with their no-op value, since ignoring any other would change what is sampled without
saying so; `user` and `metadata` are bookkeeping and always accepted. Types are strict: `"0.5"`
is not a temperature. vLLM's extensions that the project's clients send are fields here:
`return_token_ids`, `stop_token_ids`, `return_tokens_as_token_ids`.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["APIError", "ChatRequest", "CompletionRequest", "Message", "Tool", "parse_request"]


class APIError(Exception):
    """A refusal, in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.kind = kind or ("server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str
    """JSON text, as OpenAI sends it."""


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _fields_fit_role(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content (only an assistant's with tool_calls may omit it)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"tool_calls belong on assistant messages, not {self.role}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """JSON Schema of the arguments."""
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class _Sampling(_Strict):
    model: str
    temperature: float = Field(default=1.0, ge=0, le=2)
    """0 is greedy."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int | None = Field(default=None, ge=0)
    """Choice i samples with seed + i, so a seeded request is reproducible; None: fresh randomness."""
    n: int = Field(default=1, ge=1)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    """vLLM's extension: generation ends after any of these ids (kept in `token_ids`)."""
    return_token_ids: bool = False
    """vLLM's extension: the prompt's and each choice's token ids in the response."""

    @property
    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none"] | None = None
    """`required` and a named function would need constrained decoding, which this engine lacks."""
    parallel_tool_calls: bool = True
    """False returns only the first call the model wrote."""
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    """Takes precedence over `max_tokens`; neither: whatever the context leaves."""
    logprobs: bool = False
    top_logprobs: int = Field(default=0, ge=0, le=0)
    """Alternatives are not computed: only 0."""

    @property
    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] = Field(min_length=1)
    """Text, or token ids (one prompt per request)."""
    max_tokens: int = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    """Any value reports each sampled token's log-prob; `top_logprobs` stays null (no alternatives)."""
    return_tokens_as_token_ids: bool = False
    """vLLM's extension: `logprobs.tokens` as `token_id:<id>`, exact where text is not."""

    @property
    def limit(self) -> int:
        return self.max_tokens


_NO_OP: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "logit_bias": (None, {}),
    "stream": (False, None),
    "stream_options": (None,),
    "store": (False, None),
    "echo": (False, None),
    "best_of": (1, None),
    "suffix": (None, ""),
    "response_format": (None, {"type": "text"}),
}
"""OpenAI's fields this engine does not implement, with the values that ask for nothing."""
_BOOKKEEPING = ("user", "metadata")

R = TypeVar("R", bound=_Sampling)


def parse_request(body: bytes, model: type[R]) -> R:
    """The request `body` asks for, or the APIError (400) that says what is wrong with it."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, not {type(data).__name__}", code="invalid_json")
    for name in _BOOKKEEPING:
        data.pop(name, None)
    unsupported = [name for name, allowed in _NO_OP.items() if name in data and data.pop(name) not in allowed]
    problems = [
        f"{name} is not supported by this server: leave it out (or send {orjson.dumps(_NO_OP[name][0]).decode()})"
        for name in unsupported
    ]
    params = list(unsupported)
    try:
        request = model.model_validate(data)
    except ValidationError as e:
        found = _problems(e)
        problems += found.values()
        params += found
    if problems:
        code = "unsupported_parameter" if unsupported else "invalid_request"
        raise APIError(400, "; ".join(dict.fromkeys(problems)), param=params[0] or None, code=code)
    return request


def _problems(error: ValidationError) -> dict[str, str]:
    """Each problem at the field it concerns (`messages[0].content`), by field."""
    problems: dict[str, str] = {}
    for item in error.errors(include_url=False):
        param = _param(item["loc"])
        if item["type"] == "extra_forbidden":
            said = f"unknown field {param!r}"
        else:
            got = f" (got {item['input']!r:.60})" if item["type"].endswith("_type") else ""
            said = f"{param or 'body'}: {item['msg']}{got}"
        problems[param] = f"{problems[param]}; {said}" if param in problems else said
    return problems


_UNION_TAG = re.compile(r"\[|^(str|int|float|bool|list|dict|none)$")
"""Where pydantic names a union member in an error's location, not a field."""


def _param(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not _UNION_TAG.search(part):
            out += f".{part}" if out else part
    return out
