"""Tools for a served chat model: the conversation handed to its chat template, and the tool
calls read back from what it wrote.

    ChatRequest.messages + tools ─► template_messages ─► (messages, tools) for apply_chat_template
    completion text ─► parse_tool_calls ─► (content, OpenAI tool_calls)

A template that renders `tools` itself (Qwen2.5, Hermes, Llama 3.1) gets them as they came,
and assistant tool calls as structured `tool_calls` with parsed arguments (the Hugging Face
convention). A template that ignores them (SmolLM2's) gets the documented text form instead:

    system:    <the request's system message, if any>\n\n + TOOLS_PROMPT listing the functions
    assistant: <content>\n<tool_call>\n{"name": "run", "arguments": {"cmd": "ls"}}\n</tool_call>
    user:      <tool_response>\n<the tool's output>\n</tool_response>   (a `tool` message)

Either way the model is read the same way: each `<tool_call>{json}</tool_call>` block naming an
offered function becomes a call (the closing tag may be missing at the end of the reply, where
the end-of-turn token cut it off); a block that is not such JSON stays in the content as text,
the model's own mistake to see. Arguments go out as canonical JSON text, so a transcript's
token ids chain across a tool-call turn only when the model wrote the call in that form.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from orchestrator.serve_protocol import Message, Tool

__all__ = ["TOOLS_PROMPT", "parse_tool_calls", "render_call", "template_messages"]

TOOLS_PROMPT = (
    "# Tools\n\nYou may call one of the functions below. To call one, reply with its name and arguments "
    "as JSON inside <tool_call></tool_call> tags:\n<tool_call>\n"
    '{{"name": "function_name", "arguments": {{"argument": "value"}}}}\n</tool_call>\n\n<tools>\n{tools}\n</tools>'
)
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


def template_messages(
    messages: list[Message], tools: list[Tool] | None, template_has_tools: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and tools, for a template that renders them) to render."""
    if template_has_tools:
        specs = [t.model_dump(exclude_none=True) for t in tools] if tools else None
        return [_structured(m) for m in messages], specs
    out = [_textual(m) for m in messages]
    if tools:
        functions = (json.dumps(t.function.model_dump(exclude_none=True)) for t in tools)
        listing = TOOLS_PROMPT.format(tools="\n".join(functions))
        if out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{listing}"}
        else:
            out.insert(0, {"role": "system", "content": listing})
    return out, None


def _structured(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": _role(message), "content": message.text}
    if message.tool_calls:
        functions = [{"name": c.function.name, "arguments": _loads(c.function.arguments)} for c in message.tool_calls]
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": f} for c, f in zip(message.tool_calls, functions, strict=True)
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def _textual(message: Message) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message.text}\n</tool_response>"}
    text = message.text
    for call in message.tool_calls or ():
        text += ("\n" if text else "") + render_call(call.function.name, _loads(call.function.arguments))
    return {"role": _role(message), "content": text}


def _role(message: Message) -> str:
    return "system" if message.role == "developer" else message.role  # OpenAI's newer name for it


def _loads(arguments: str) -> Any:
    """Arguments as an object for the template; text that is not JSON stays text."""
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments


def render_call(name: str, arguments: Any) -> str:
    """A call in the text form the tools prompt asks for."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def parse_tool_calls(text: str, offered: set[str]) -> tuple[str | None, list[dict[str, Any]]]:
    """(content without the call blocks, or None if nothing else was said; OpenAI tool_calls)."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for block in _BLOCK.finditer(text):
        call = _call(block.group(1), offered)
        if call is not None:
            kept.append(text[last : block.start()])
            last = block.end()
            calls.append(call)
    if not calls:
        return text, []
    kept.append(text[last:])
    return "".join(kept).strip() or None, calls


def _call(body: str, offered: set[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("name") not in offered:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))  # Llama 3.1's templates say `parameters`
    if isinstance(arguments, str):  # already JSON text
        arguments = _loads(arguments)
    function = {"name": data["name"], "arguments": json.dumps(arguments)}
    return {"id": f"call_{secrets.token_hex(12)}", "type": "function", "function": function}
