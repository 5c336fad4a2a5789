"""Where an episode goes on after an error is a property of the error's type (`Fault`), not a list
kept by the rollout loop: these are the rules the loop relies on."""

from __future__ import annotations

import pickle

import pytest

from hillclimb.errors import (
    AuthenticationError,
    CapacityReachedError,
    ConnectionLostError,
    ConnectTimeoutError,
    ExecutionError,
    FactoryError,
    Fault,
    MessageTimeoutError,
    MessageValidationError,
    SessionError,
    StepTimeoutError,
    TLSError,
    fault_of,
)


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (AuthenticationError("refused"), Fault.RUN),
        (TLSError("untrusted"), Fault.RUN),
        (ConnectionLostError("gone"), Fault.SANDBOX),
        (ConnectTimeoutError("slow"), Fault.SANDBOX),
        (MessageTimeoutError("silent"), Fault.SANDBOX),
        (SessionError("reaped"), Fault.SANDBOX),
        (CapacityReachedError("full"), Fault.SANDBOX),
        (ConnectionRefusedError("a bare socket error"), Fault.SANDBOX),
        # a step that ran past the server's limit closed its session: a TimeoutError, so the sandbox's
        (StepTimeoutError("too long"), Fault.SANDBOX),
        (ExecutionError("the env raised"), Fault.ENVIRONMENT),
        (FactoryError("no env"), Fault.ENVIRONMENT),
        (MessageValidationError("bad task"), None),
        (ValueError("anything else"), None),
    ],
)
def test_each_error_type_says_where_an_episode_goes_on(error: BaseException, fault: Fault | None) -> None:
    assert fault_of(error) is fault


def test_the_fault_survives_pickling_across_processes() -> None:
    error = pickle.loads(pickle.dumps(ConnectionLostError("gone", request="step")))
    assert fault_of(error) is Fault.SANDBOX and error.request == "step"
