"""`hillclimb runs ls` and `hillclimb runs show`, run as the real command over run directories
laid out as `train` and `rollout` leave them (their ledgers written by the real Ledger)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.episode_text import ROLE_STYLES, role_segments, tagged_text
from orchestrator.heartbeats import Heartbeat
from tests.orchestrator.episodes_for_tests import (
    ACTION,
    ANSWER,
    OBSERVATION,
    PROMPT,
    WARNING,
    record_groups,
    write_run,
)
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer

REPO = Path(__file__).parents[2]


def _hillclimb(
    *args: str, columns: int = 80, colour: bool = False, home: Path | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE")}
    env |= {"COLUMNS": str(columns), "TERM": "xterm-256color"}
    if colour:
        env["FORCE_COLOR"] = "1"  # the output is a pipe here; rich then colours as on a terminal
    if home is not None:
        env["HILLCLIMB_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "runs", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A finished training run, an interrupted one, and a rollout stopped after two groups."""
    root = tmp_path / "runs"
    trained, _ = write_run(root, "echo-toy", "train.steps=5")
    records = [
        {"kind": "eval_initial", "step": 0, "heldout_env_ce": 5.5},
        {"kind": "train", "step": 1, "train_reward": 0.5},
        {"kind": "train", "step": 2, "train_reward": 0.75},
        {"kind": "eval", "step": 2, "heldout_env_ce": 4.0, "heldout_pass1": 0.25},
        {"kind": "train", "step": 3, "train_reward": 1.0},
    ]
    (trained / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (trained / "summary.json").write_text(json.dumps({"heldout_pass1": {"final": 0.25}, "rl_steps": 3}))
    record_groups(
        trained / "ledger",
        {
            "eval2-heldout-r2-find-disk": [{"task_id": "find-disk", "reward": 1.0}],
            "train-train-r0-count-lines": [
                {"task_id": "count-lines", "split": "train", "sample": 0, "reward": 0.0},
                {"task_id": "count-lines", "split": "train", "sample": 1, "reward": 1.0},
            ],
        },
    )
    stopped, _ = write_run(root, "stopped-during-training", "train.steps=5")
    (stopped / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "train_reward": 0.0}) + "\n")
    (stopped / "summary.json").write_text(json.dumps({"rl_steps": 1, "interrupted": True}))
    rollout, _ = write_run(root, "rollout-toy", "rollout.group_size=2")
    record_groups(
        rollout / "ledger",
        {f"eval-heldout-r0-t{i}": [{"task_id": f"t{i}", "sample": s} for s in range(2)] for i in range(2)},
    )
    elsewhere = tmp_path / "shared-ledgers" / "rollout-done"  # run.ledger_uri: not in the run dir
    done, _ = write_run(root, "rollout-done", "rollout.group_size=2", f"run.ledger_uri={elsewhere}")
    record_groups(elsewhere, {"eval-heldout-r0-t0": [{"task_id": "t0", "sample": s} for s in range(2)]})
    reports = [
        {"split": "heldout", "tasks": 1, "episodes": 2, "pass_at": {"1": 0.5}, "mean_reward": 0.5, "done_reasons": {}}
    ]
    (done / "eval.json").write_text(json.dumps(reports))
    ages = ((trained, 2 * 86400 + 60), (stopped, 3 * 3600 + 60), (rollout, 5 * 60 + 10), (done, 30))
    for run_dir, age_s in ages:
        started = time.time() - age_s  # when each (re)started: its config.json was written then
        os.utime(run_dir / "config.json", (started, started))
    return root


def test_ls_shows_each_run_on_one_line_within_80_columns(runs: Path) -> None:
    done = _hillclimb("ls", "--root", str(runs))
    assert done.returncode == 0, done.stderr
    lines = [line.rstrip() for line in done.stdout.splitlines()]
    assert all(len(line) <= 80 for line in lines), done.stdout
    assert lines[0].split() == ["run", "kind", "env", "progress", "result", "started", "state"]
    # oldest first; the env is the column that gives way when a long run name needs the room
    expected = [
        r"echo-toy +train +toy_\S+ +3/5 steps +p@1 0\.250 +2d ago +finished",
        r"stopped-during-training +train +toy_\S+ +1/5 steps +rew 0\.000 +3h ago +interrupted",
        # no eval.json: the rollout stopped; its ledger holds 2 groups of group_size 2
        r"rollout-toy +rollout +toy_\S+ +4 episodes +- +5m ago +interrupted",
        r"rollout-done +rollout +toy_\S+ +2 episodes +p@1 0\.500 +\d\ds ago +finished",
    ]
    assert len(lines) == 5
    for pattern, line in zip(expected, lines[1:], strict=True):
        assert re.fullmatch(pattern, line), line


def test_ls_says_running_while_a_runs_workers_beat(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path / "home"))
    with Heartbeat("rollout-toy"):  # as a rollout worker holding the run's sandboxes
        during = _hillclimb("ls", "--root", str(runs), home=tmp_path / "home")
    after = _hillclimb("ls", "--root", str(runs), home=tmp_path / "home")
    state = {line.split()[0]: line.split()[-1] for line in during.stdout.splitlines()[1:]}
    assert state == {
        "echo-toy": "finished",
        "stopped-during-training": "interrupted",
        "rollout-toy": "running",
        "rollout-done": "finished",
    }
    assert "rollout-toy" in after.stdout and "running" not in after.stdout


def test_ls_without_a_runs_directory_names_the_option(tmp_path: Path) -> None:
    done = _hillclimb("ls", "--root", str(tmp_path / "nowhere"))
    assert done.returncode == 2
    assert "no runs directory" in done.stderr and "--root" in done.stderr


def test_show_summarises_the_run_and_tables_its_episodes(runs: Path) -> None:
    done = _hillclimb("show", "echo-toy", "--root", str(runs), columns=160)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "train, finished" in out and "env toy_terminal" in out and "steps 5" in out
    assert "heldout_pass1.final" in out and "rl_steps" in out
    assert "3 episodes" in out
    rows = [line.split("│")[1:-1] for line in out.splitlines() if line.startswith("│")]
    episodes = [[cell.strip() for cell in row] for row in rows if len(row) == 7]
    assert [row[:6] for row in episodes] == [
        ["0", "find-disk", "heldout", "1", "finished", "3"],
        ["1", "count-lines", "train", "0", "step_limit", "3"],
        ["2", "count-lines", "train", "1", "finished", "3"],
    ]
    only_train = _hillclimb("show", "echo-toy", "--root", str(runs), "--split", "train", columns=160)
    assert "2 episodes" in only_train.stdout and "find-disk" not in only_train.stdout


def test_show_reads_a_rollouts_eval_json_and_its_ledger_where_the_config_put_it(runs: Path, tmp_path: Path) -> None:
    done = _hillclimb("show", "rollout-done", "--root", str(runs), columns=160)
    assert done.returncode == 0, done.stderr
    assert f"ledger: {tmp_path / 'shared-ledgers' / 'rollout-done'}" in done.stdout
    assert "eval.json" in done.stdout and "pass@1" in done.stdout and "0.500" in done.stdout
    assert "2 episodes" in done.stdout
    plain = _hillclimb("show", "rollout-done", "--root", str(runs), "--episode", "1", "--plain", colour=True)
    assert "sample 1" in plain.stdout and f"<ENV>{OBSERVATION}</ENV>" in plain.stdout
    assert "\x1b[" not in plain.stdout  # --plain wins over a colour terminal


def test_show_episode_prints_each_role_in_its_own_colour_with_a_legend(runs: Path) -> None:
    done = _hillclimb("show", str(runs / "echo-toy"), "--group", "train-", "--episode", "1", colour=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "task count-lines (train), reward 1" in out
    assert "\x1b[1;32m" + ACTION.rstrip("\n") in out  # ACTION: bold green
    assert "\x1b[33m" + OBSERVATION.rstrip("\n") in out  # ENV: yellow
    assert "\x1b[1;36m" + PROMPT in out  # PROMPT: bold cyan
    for role in Role:
        assert role.name in out  # the legend
    assert "<ACTION>" not in out


def test_show_episode_without_a_terminal_tags_the_roles(runs: Path) -> None:
    done = _hillclimb("show", "echo-toy", "--root", str(runs), "--episode", "0")
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    text = done.stdout.split("\n", 1)[1]
    assert text.startswith(f"<PROMPT>{PROMPT}\n</PROMPT><SCAFFOLD>$ </SCAFFOLD><ACTION>{ACTION}</ACTION>")
    assert f"<ENV>{OBSERVATION}</ENV>" in text
    assert f"<WARNING>[harness] {WARNING}\n</WARNING>" in text
    assert f"<ACTION>{ANSWER}</ACTION>" in text


def test_show_an_episode_that_is_not_there_says_how_many_are(runs: Path) -> None:
    done = _hillclimb("show", "echo-toy", "--root", str(runs), "--split", "heldout", "--episode", "1")
    assert done.returncode == 2
    assert "--episode 1: 1 episodes match (#0 to #0)" in done.stderr


def test_show_an_unknown_run_lists_the_known_ones(runs: Path) -> None:
    done = _hillclimb("show", "echo-toi", "--root", str(runs))
    assert done.returncode == 2
    assert "no run 'echo-toi'" in done.stderr and "echo-toy" in done.stderr


def test_same_role_tokens_decode_together_so_characters_split_over_tokens_read_whole() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("café") + tokenizer.encode(" ok") + [tokenizer.bos_token_id]
    roles = [Role.ENV] * 5 + [Role.ACTION] * 3 + [Role.SCAFFOLD]  # "é" is two byte tokens
    segments = role_segments(ids, [int(r) for r in roles], tokenizer)
    assert segments == [(Role.ENV, "café"), (Role.ACTION, " ok")]  # <bos> decodes to nothing: left out
    assert tagged_text(segments) == "<ENV>café</ENV><ACTION> ok</ACTION>"
    with pytest.raises(ValueError, match="3 token ids but 2 roles"):
        role_segments([1, 2, 3], [0, 0], tokenizer)


def test_every_role_has_a_style_of_its_own() -> None:
    assert set(ROLE_STYLES) == set(Role)
    assert len(set(ROLE_STYLES.values())) == len(Role)


def test_show_reads_the_listing_columns_and_only_the_shown_episodes_group(
    runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--episode N` used to read and decode every episode of the run (11 s on a long one)."""
    from typer.testing import CliRunner

    from orchestrator.commands.runs import app
    from orchestrator.ledger import ENTRY_COLUMNS, Ledger

    assert not {"token_ids", "roles", "logprobs", "metadata"} & set(ENTRY_COLUMNS)
    whole: list[str] = []
    read_group = Ledger.read_group
    monkeypatch.setattr(
        Ledger, "read_group", lambda self, group_id: whole.append(group_id) or read_group(self, group_id)
    )
    shown = CliRunner().invoke(app, ["show", "echo-toy", "--root", str(runs), "--episode", "2", "--plain"])
    assert shown.exit_code == 0, shown.output
    assert "task count-lines (train), reward 1" in shown.output and "sample 1" in shown.output
    assert whole == ["train-train-r0-count-lines"]
    listed = CliRunner().invoke(app, ["show", "echo-toy", "--root", str(runs)])
    assert listed.exit_code == 0 and "3 episodes" in listed.output
    assert whole == ["train-train-r0-count-lines"]  # the table reads no episode whole
