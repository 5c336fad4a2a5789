"""Terminal output for the CLI: one rich console, and typed errors shown as one clear line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from hillclimb.errors import HillclimbError

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Turn a `HillclimbError` into a red message and exit status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HillclimbError as e:
            errors.print(f"[bold red]error:[/] {type(e).__name__}: {e}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
