"""`PolicyServerClient`: a worker's concurrent requests reach the policy server as one call, and a
request the server refuses fails alone."""

from __future__ import annotations

import asyncio

import pytest

from hillclimb.config.rollout import SamplingParams
from orchestrator.workers import PolicyServerClient
from tests.orchestrator.helpers import PolicyServerStandIn
from trainers.policy.base import GenerateRequest
from trainers.tokenizer import ByteTokenizer

pytestmark = pytest.mark.ray


@pytest.fixture
def server(ray_local: None):  # type: ignore[no-untyped-def]
    import ray

    handle = ray.remote(num_cpus=0, max_concurrency=64)(PolicyServerStandIn).remote()
    yield handle
    ray.kill(handle)


def _request(first: int, last: int) -> GenerateRequest:
    return GenerateRequest(prompt_ids=(first, last))


async def test_concurrent_requests_go_out_as_one_call_per_sampling_setting(server) -> None:  # type: ignore[no-untyped-def]
    policy = PolicyServerClient([server], ByteTokenizer())
    cold, warm = SamplingParams(temperature=0.0), SamplingParams(temperature=0.7)
    outcomes = await asyncio.gather(
        *(policy.generate([_request(1, 100 + i)], cold) for i in range(6)),
        *(policy.generate([_request(1, 200 + i)], warm) for i in range(2)),
    )
    assert [g.token_ids for (g,) in outcomes] == [(100 + i,) for i in range(6)] + [(200,), (201,)]
    assert sorted(await server.seen.remote()) == [(2, 0.7), (6, 0.0)]
    assert policy.version == 3


async def test_a_refused_request_fails_alone(server) -> None:  # type: ignore[no-untyped-def]
    policy = PolicyServerClient([server], ByteTokenizer())
    sampling = SamplingParams()
    outcomes = await asyncio.gather(
        *(policy.generate([_request(13 if i == 2 else 1, 50 + i)], sampling) for i in range(4)),
        return_exceptions=True,
    )
    assert [o[0].token_ids if isinstance(o, list) else type(o).__name__ for o in outcomes] == [
        (50,),
        (51,),
        "RayTaskError(ValueError)",
        (53,),
    ]
    assert isinstance(outcomes[2], ValueError) and "refused on purpose" in str(outcomes[2])
    assert await server.seen.remote() == [(4, 1.0)] + [(1, 1.0)] * 4  # the batch, then one by one
