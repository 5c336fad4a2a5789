"""`hillclimb env serve` without a token: one token file per server, never another server's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hillclimb.errors import ConfigError
from orchestrator.commands.env import _token_for_serving, server_token_file


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HILLCLIMB_ENV_TOKEN", raising=False)


def test_a_second_server_leaves_the_first_ones_token_alone(capsys: pytest.CaptureFixture[str]) -> None:
    first = _token_for_serving(None, 8000, None)
    second = _token_for_serving(None, 8001, None)
    assert first != second
    assert Path(".hillclimb-token-8000").read_text() == first
    assert Path(".hillclimb-token-8001").read_text() == second
    assert str(Path(".hillclimb-token-8001").resolve()) in capsys.readouterr().err  # whole, to copy
    assert os.stat(".hillclimb-token-8000").st_mode & 0o777 == 0o600


def test_a_restarted_server_keeps_its_token_for_its_clients() -> None:
    token = _token_for_serving(None, 8000, None)
    assert _token_for_serving(None, 8000, None) == token


def test_unix_sockets_and_free_ports_get_their_own_files(tmp_path: Path) -> None:
    assert server_token_file(0, tmp_path / "env.sock") == Path(".hillclimb-token-env.sock")
    assert server_token_file(0, None) == Path(f".hillclimb-token-pid{os.getpid()}")


def test_a_token_file_others_can_read_is_refused() -> None:
    Path(".hillclimb-token-8000").write_text("leaked")
    os.chmod(".hillclimb-token-8000", 0o644)
    with pytest.raises(ConfigError, match="readable by others: chmod 600"):
        _token_for_serving(None, 8000, None)
