"""Wire compatibility with the real `openenv` package, both ways round.

(a) OpenEnv's own clients (`GenericEnvClient`, a typed `EnvClient` subclass) drive OUR server
    through whole episodes with a bearer token, and our server serves an environment written
    against OpenEnv's `Environment` base class and types, unchanged.
(b) OUR `EnvClient` drives a server made by OpenEnv's `create_app`, run by uvicorn on loopback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from openenv.core.client_types import StepResult as OpenEnvStepResult
from openenv.core.env_client import EnvClient as OpenEnvClient
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.interfaces import Environment as OpenEnvEnvironment
from openenv.core.env_server.types import Action as OpenEnvAction
from openenv.core.env_server.types import Observation as OpenEnvObservation
from openenv.core.env_server.types import State as OpenEnvState
from openenv.core.generic_client import GenericEnvClient
from wire import eventually

from envs.client.http_client import HttpEnvClient, http_request
from envs.client.ws_client import EnvClient
from hillclimb.errors import ExecutionError, MessageValidationError


class ShoutAction(OpenEnvAction):
    message: str
    loud: bool = False


class ShoutObservation(OpenEnvObservation):
    echoed: str = ""
    length: int = 0


class ShoutEnv(OpenEnvEnvironment[ShoutAction, ShoutObservation, OpenEnvState]):
    """Written against OpenEnv's base class only: echoes messages; done after three."""

    SUPPORTS_CONCURRENT_SESSIONS = True
    created = 0
    closed = 0

    def __init__(self) -> None:
        super().__init__()
        ShoutEnv.created += 1
        self._state = OpenEnvState()

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> ShoutObservation:
        self._state = OpenEnvState(episode_id=episode_id or "fresh", step_count=0)
        return ShoutObservation(metadata={"seed": seed, **kwargs})

    def step(self, action: ShoutAction, timeout_s: float | None = None, **kwargs: Any) -> ShoutObservation:
        if action.message == "boom":
            raise RuntimeError("shout env exploded")
        self._state.step_count += 1
        text = action.message.upper() if action.loud else action.message
        done = self._state.step_count >= 3
        return ShoutObservation(echoed=text, length=len(text), reward=float(len(text)), done=done)

    @property
    def state(self) -> OpenEnvState:
        return self._state

    def close(self) -> None:
        ShoutEnv.closed += 1


class AsyncShoutEnv(ShoutEnv):
    """Overrides OpenEnv's `step_async`: our server awaits it on the loop."""

    async def step_async(self, action: ShoutAction, timeout_s: float | None = None, **kwargs: Any) -> ShoutObservation:
        await asyncio.sleep(0)
        return self.step(action)


class ShoutClient(OpenEnvClient[ShoutAction, ShoutObservation, OpenEnvState]):
    """A typed OpenEnv client, written the way OpenEnv's own env packages write theirs."""

    def _step_payload(self, action: ShoutAction) -> dict[str, Any]:
        return action.model_dump()

    def _parse_result(self, payload: dict[str, Any]) -> OpenEnvStepResult[ShoutObservation]:
        obs = ShoutObservation(**payload["observation"], reward=payload.get("reward"), done=payload.get("done", False))
        return OpenEnvStepResult(observation=obs, reward=payload.get("reward"), done=payload.get("done", False))

    def _parse_state(self, payload: dict[str, Any]) -> OpenEnvState:
        return OpenEnvState(**payload)


@pytest.fixture(autouse=True)
def _zero_counters() -> None:
    ShoutEnv.created = ShoutEnv.closed = 0


def _base_url(served) -> str:
    return served.url.replace("ws://", "http://").removesuffix("/ws")


# -- (a) OpenEnv's clients, our server --------------------------------------------------------


@pytest.mark.parametrize("env_cls", [ShoutEnv, AsyncShoutEnv], ids=["sync step", "async step"])
async def test_openenv_generic_client_drives_our_server(start_server, env_cls):
    served = await start_server(env_cls)
    client = GenericEnvClient(
        base_url=_base_url(served), headers={"Authorization": "Bearer test-token"}, message_timeout_s=5.0
    )
    async with client:
        first = await client.reset(seed=7, episode_id="ep-9")
        assert (first.observation["echoed"], first.reward, first.done) == ("", None, False)
        assert first.observation["metadata"] == {"seed": 7}
        rewards = []
        for message in ("hi", "there", "you"):
            result = await client.step({"message": message, "loud": message == "there"})
            rewards.append(result.reward)
        assert result.observation == {"echoed": "you", "length": 3, "metadata": {}}
        assert (rewards, result.done) == ([2.0, 5.0, 3.0], True)
        assert await client.state() == {"episode_id": "ep-9", "step_count": 3}
        with pytest.raises(RuntimeError, match="VALIDATION_ERROR"):
            await client.step({"mesage": "typo"})
        with pytest.raises(RuntimeError, match="EXECUTION_ERROR"):
            await client.step({"message": "boom"})
        assert (await client.reset()).observation["echoed"] == ""  # the session survived both
    await eventually(lambda: ShoutEnv.closed == 1)
    assert ShoutEnv.created == 1


async def test_openenv_typed_client_drives_our_server_over_http_url(start_server):
    served = await start_server(ShoutEnv)
    async with ShoutClient(base_url=_base_url(served), headers={"Authorization": "Bearer test-token"}) as client:
        await client.reset()
        result = await client.step(ShoutAction(message="typed", loud=True))
        assert isinstance(result.observation, ShoutObservation)
        assert (result.observation.echoed, result.observation.length, result.reward) == ("TYPED", 5, 5.0)
        state = await client.state()
        assert isinstance(state, OpenEnvState) and state.step_count == 1


async def test_openenv_client_without_the_token_is_refused_before_any_env(start_server):
    served = await start_server(ShoutEnv)
    client = GenericEnvClient(base_url=_base_url(served))
    with pytest.raises(ConnectionError, match="401"):
        await client.connect()
    await client.close()
    assert ShoutEnv.created == 0


async def test_our_server_publishes_openenv_types(start_server):
    served = await start_server(ShoutEnv)
    status, schema = await http_request(_base_url(served), "/schema", token="test-token")
    assert status == 200
    assert schema["action"] == ShoutAction.model_json_schema()
    assert schema["observation"] == ShoutObservation.model_json_schema()
    assert schema["state"] == OpenEnvState.model_json_schema()
    status, meta = await http_request(_base_url(served), "/metadata", token="test-token")
    assert (status, meta["name"]) == (200, "ShoutEnv")


# -- (b) our client, OpenEnv's server -------------------------------------------------------------


@pytest.fixture
def openenv_server() -> Iterator[str]:
    """OpenEnv's `create_app` under uvicorn in a thread, on a loopback socket bound to port 0."""
    app = create_app(ShoutEnv, ShoutAction, ShoutObservation, env_name="shout", max_concurrent_envs=4)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(5.0)
        sock.close()


async def test_our_client_drives_an_openenv_server(openenv_server):
    async with EnvClient(openenv_server, connect_timeout_s=5.0, message_timeout_s=5.0) as client:
        first = await client.reset(seed=3, episode_id="ours")
        assert (first.observation["echoed"], first.done, first.metadata) == ("", False, {"seed": 3})
        totals = [(await client.step({"message": m})).reward for m in ("a", "bb")]
        last = await client.step(ShoutAction(message="ccc", loud=True))
        assert (totals, last.observation["echoed"], last.reward, last.done) == ([1.0, 2.0], "CCC", 3.0, True)
        assert await client.state() == {"episode_id": "ours", "step_count": 3}
        with pytest.raises(MessageValidationError) as e:
            await client.step({"mesage": "typo"})
        assert {tuple(err["loc"]) for err in e.value.errors} >= {("message",), ("mesage",)}
        with pytest.raises(ExecutionError, match="exploded"):
            await client.step({"message": "boom"})
        assert (await client.reset()).observation["echoed"] == ""  # the session survived both
    for path in ("/health", "/schema", "/metadata"):
        status, _ = await http_request(openenv_server, path)
        assert status == 200, path
    # OpenEnv's server makes throwaway instances too (for /metadata): every one must be closed.
    await eventually(lambda: ShoutEnv.closed == ShoutEnv.created >= 2)


async def test_our_http_client_drives_openenvs_http_routes(openenv_server) -> None:
    """OpenEnv's /reset and /step take our client's requests (its routes are stateless: each a fresh instance)."""
    async with HttpEnvClient(openenv_server, connect_timeout_s=5.0) as env:
        first = await env.reset(seed=3)
        assert (first.observation["echoed"], first.metadata, env.session_id) == ("", {"seed": 3}, None)
        shouted = await env.step({"message": "hi", "loud": True})
        assert (shouted.observation["echoed"], shouted.reward) == ("HI", 2.0)
        with pytest.raises(MessageValidationError) as bad:  # OpenEnv's own 422 body, read as ours
            await env.step({"mesage": "typo"})
        assert {tuple(err["loc"]) for err in bad.value.errors} >= {("message",), ("mesage",)}
