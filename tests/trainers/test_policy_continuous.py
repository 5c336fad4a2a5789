"""Continuous batching: `ContinuousBatcher`'s scheduling against a stand-in decode batch, then
`HFPolicy` on a tiny Llama, where requests join a running decode batch and must still decode
exactly what the static path decodes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
import torch

from hillclimb.config.rollout import SamplingParams
from tests.trainers.test_policy_hf import TINY, TOKENIZER, _assert_same, _gpt2, _hf
from trainers.models import build_tiny_model
from trainers.policy.base import GenerateRequest
from trainers.policy.continuous import ContinuousBatcher
from trainers.policy.prefix_cache import PrefixCache
from trainers.policy.running_batch import RunningBatch


class _Countdown:
    """A decode batch whose items are step counts: an item finishes after that many steps, its
    result the step (of this batch) it joined at."""

    def __init__(self, log: list[str], fail_at: int | None = None) -> None:
        self.step_count = 0
        self._log = log
        self._fail_at = fail_at
        self._rows: dict[object, list[int]] = {}

    def admit(self, entries: list[tuple[object, int]]) -> None:
        for key, steps in entries:
            self._rows[key] = [steps, self.step_count]
            self._log.append(f"admit {steps}")

    def keys(self) -> list[object]:
        return list(self._rows)

    def step(self) -> list[tuple[object, int]]:
        time.sleep(0.002)  # a decode step's compute, off the event loop
        self.step_count += 1
        if self.step_count == self._fail_at:
            raise RuntimeError("the engine broke")
        done = []
        for key, row in list(self._rows.items()):
            row[0] -= 1
            if row[0] == 0:
                done.append((key, row[1]))
                del self._rows[key]
                self._log.append("finish")
        return done


async def test_an_item_arriving_mid_decode_joins_at_the_next_step_and_leaves_when_done() -> None:
    log: list[str] = []
    batches: list[_Countdown] = []

    def start() -> _Countdown:
        batches.append(_Countdown(log))
        return batches[-1]

    batcher = ContinuousBatcher[int, int](start, max_batch=8, thread_name="test")
    long = asyncio.create_task(batcher.submit([200]))
    while not batches or batches[0].step_count < 5:
        await asyncio.sleep(0.001)
    (joined_at,) = await batcher.submit([3])
    assert not long.done() and len(batches) == 1  # it joined the running batch and came back first
    assert 5 <= joined_at < batches[0].step_count
    assert await long == [0] and log == ["admit 200", "admit 3", "finish", "finish"]


async def test_at_most_max_batch_items_run_and_the_rest_join_as_rows_leave() -> None:
    log: list[str] = []
    batcher = ContinuousBatcher[int, int](lambda: _Countdown(log), max_batch=2, thread_name="test")
    results = await batcher.submit([3, 6, 2, 2])
    assert max(batcher.step_sizes) == 2
    # 3 and 6 run; 2 joins when 3 leaves (after step 3), the last 2 when that one leaves (after step 5).
    assert results == [0, 0, 3, 5]


async def test_a_failing_step_fails_its_items_and_later_items_get_a_fresh_batch() -> None:
    log: list[str] = []
    made = [_Countdown(log, fail_at=2), _Countdown(log)]
    batcher = ContinuousBatcher[int, int](lambda: made.pop(0), max_batch=8, thread_name="test")
    with pytest.raises(RuntimeError, match="the engine broke"):
        await batcher.submit([5, 5])
    assert await batcher.submit([1]) == [0]


async def test_a_call_waits_for_running_items_and_items_queued_meanwhile_run_after_it() -> None:
    log: list[str] = []
    batcher = ContinuousBatcher[int, int](lambda: _Countdown(log), max_batch=8, thread_name="test")
    running = asyncio.create_task(batcher.submit([40]))
    while batcher.running == 0:
        await asyncio.sleep(0.001)
    load = asyncio.create_task(batcher.call(lambda: log.append(f"load on {threading.current_thread().name}")))
    await asyncio.sleep(0.005)
    queued = asyncio.create_task(batcher.submit([1]))
    await asyncio.gather(running, load, queued)
    assert log[:3] == ["admit 40", "finish", "load on " + log[2].removeprefix("load on ")]
    assert log[2].startswith("load on test") and log[3:] == ["admit 1", "finish"]


LONG = SamplingParams(max_new_tokens=120, temperature=0.0)
SHORT = SamplingParams(max_new_tokens=3, temperature=0.0)


@pytest.mark.parametrize("batching", ["continuous", "static"])
async def test_a_short_request_arriving_mid_decode_returns_before_the_long_one(batching: str) -> None:
    policy = _hf(build_tiny_model(TINY).eval(), TOKENIZER, max_wait_s=0.0, batching=batching)
    long = asyncio.create_task(policy.generate([GenerateRequest(prompt_ids=tuple(TOKENIZER.encode("ls -la\n")))], LONG))
    while policy._batcher.running == 0:
        await asyncio.sleep(0.001)
    await policy.generate([GenerateRequest(prompt_ids=tuple(TOKENIZER.encode("pwd\n")))], SHORT)
    # Continuous: it joined at the next step and came back after 3 tokens. Static: it waited for all 120.
    assert long.done() == (batching == "static")
    await long


async def test_requests_joining_a_running_batch_decode_what_the_static_path_decodes() -> None:
    llama = build_tiny_model(TINY).eval()
    static, continuous = _hf(llama, TOKENIZER, batching="static"), _hf(llama, TOKENIZER)
    texts = ["$ ", "cat app.log\n", "You are in a read-only shell.\nQuestion: which port?\n$ ", "l", "grep -n port *"]
    calls = [
        (
            GenerateRequest(prompt_ids=tuple(TOKENIZER.encode(text)), seed=i),
            SamplingParams(
                max_new_tokens=5 + 9 * (i % 4), temperature=0.0 if i % 2 else 1.0, top_p=1.0 - 0.1 * (i % 3)
            ),
        )
        for i, text in enumerate(texts * 2)
    ]
    alone = [static.generate_sync([r], s)[0] for r, s in calls]
    # Alone, a continuous batch computes exactly what a static batch of one does: bit for bit.
    assert [continuous.generate_sync([r], s)[0] for r, s in calls] == alone

    async def arrive(i: int) -> object:
        await asyncio.sleep(0.004 * i)  # staggered: most join a batch already decoding
        (generation,) = await continuous.generate([calls[i][0]], calls[i][1])
        return generation

    joined = await asyncio.gather(*(arrive(i) for i in range(len(calls))))
    assert max(continuous._batcher.step_sizes) > 1 and len(continuous._batcher.batch_sizes) >= 1
    _assert_same(joined, alone)  # same tokens (greedy and sampled); log-probs to 1e-5


def _entry(text: str, max_new_tokens: int) -> tuple[str, tuple[GenerateRequest, SamplingParams]]:
    request = GenerateRequest(prompt_ids=tuple(TOKENIZER.encode(text)))
    return text, (request, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))


def test_the_cache_spans_the_longest_running_row_not_the_age_of_the_batch() -> None:
    llama = build_tiny_model(TINY).eval()
    batch = RunningBatch(llama, pad_id=256, eos_id=258, prefixes=PrefixCache(max_entries=4), version=0)
    first, second, third = "a long prompt that comes first\n", "b\n", "c: a mid-length one\n"
    batch.admit([_entry(first, 40)])
    finished: list[object] = []
    for step in range(80):
        if step in (10, 20):  # a newcomer joins the running rows
            batch.admit([_entry(second if step == 10 else third, 45)])
        finished += [key for key, _ in batch.step()]
        if batch._rows:
            spans = [len(row.prompt) + len(row.tokens) - 1 for row in batch._rows]
            assert batch._forward.length == max(spans), step  # type: ignore[union-attr]
            if step == 45:  # the long row has left (step 39), and the padding ahead of the newcomers with it:
                # the third row (27 tokens sampled since step 20, 26 fed back) spans the cache.
                assert batch._forward.length == len(third) + 26 < len(first) + 39  # type: ignore[union-attr]
    assert finished == [first, second, third]


def test_models_off_the_lean_path_batch_statically_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="hillclimb.trainers.policy"):
        policy = _hf(_gpt2(), TOKENIZER)
    assert policy.batching == "static" and "GPT2LMHeadModel batches statically" in caplog.text
    assert torch.is_tensor(next(policy._model.parameters()))


def test_a_policy_serves_one_event_loop_after_another() -> None:
    """`asyncio.run` returns as soon as its results are in, while the decode job is still ending:
    the next loop's requests must still start a job (they once waited forever)."""
    policy = _hf(build_tiny_model(TINY).eval(), TOKENIZER)
    request = GenerateRequest(prompt_ids=tuple(TOKENIZER.encode("pwd\n")))
    for _ in range(5):
        (generation,) = asyncio.run(asyncio.wait_for(policy.generate([request], SHORT), timeout=20))
        assert len(generation.token_ids) == 3
