"""One readiness poll for every provider: `/health` until it answers, or the sandbox dies, or time runs out.

    await wait_healthy(sandbox, timeout_s, died=why_dead, destroy=provider.destroy, log_tail=provider.log_tail)

Polls back off from 1 ms to 50 ms: a local sandbox answers in tens of milliseconds and must
not wait for a coarse tick, a container in hundreds and must not be hammered. Whether the
sandbox died is asked at most every `death_check_s` (a Docker inspect is a round trip to the
engine). Either failure destroys the sandbox, so a caller never holds a half-started one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from hillclimb.provider_errors import ReadyTimeoutError, SandboxDiedError
from providers.contract import Sandbox

READY_TIMEOUT_S = 60.0
"""The default wait, the same for every provider."""
_FIRST_DELAY_S = 0.001
_MAX_DELAY_S = 0.05


async def wait_healthy(
    sandbox: Sandbox,
    timeout_s: float,
    *,
    died: Callable[[], Awaitable[str | None]],
    destroy: Callable[[str], Awaitable[None]],
    log_tail: Callable[[str], Awaitable[str]],
    death_check_s: float = 0.0,
) -> None:
    """Return once the sandbox's `/health` answers 200. `died()` says why the sandbox is gone
    (e.g. "exited (code 1)"), or None while it lives."""
    deadline = time.monotonic() + timeout_s
    next_death_check = time.monotonic() + death_check_s
    delay = _FIRST_DELAY_S
    while True:
        if await sandbox.handle.healthy(timeout=1.0):
            return
        now = time.monotonic()
        if now >= next_death_check:
            next_death_check = now + death_check_s
            why = await died()
            if why is not None:
                tail = await log_tail(sandbox.id)
                await destroy(sandbox.id)
                raise SandboxDiedError(f"sandbox {sandbox.id} {why} while starting; log tail:\n{tail}", log_tail=tail)
        if now + delay > deadline:
            await destroy(sandbox.id)
            raise ReadyTimeoutError(f"sandbox {sandbox.id} was not ready within {timeout_s:g} s (destroyed)")
        await asyncio.sleep(delay)
        delay = min(delay * 2, _MAX_DELAY_S)
