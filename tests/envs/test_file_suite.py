"""Task suites from files: JSONL and YAML rows (extra fields kept for the rubric), a saved Hugging
Face dataset when `datasets` is installed, and the generic text <-> Action / Observation mapping."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from envs.authoring.base import Action, Observation
from envs.authoring.file_suite import FileSuite, TaskRow, read_rows
from envs.authoring.tasks import ActionParseError, ToolCallSuite
from hillclimb.errors import ConfigError

ROWS = [
    {"id": "greet", "split": "train", "prompt": "Say hello", "oracle": ["hello"], "answer": "hello"},
    {"id": "count", "split": "heldout", "prompt": "Count to 2", "answer": {"words": ["one", "two"]}, "level": 3},
]


class TextAction(Action):
    text: str


class MoveAction(Action):
    dx: int
    dy: int = 0


class TextObservation(Observation):
    text: str = ""


class BoardObservation(Observation):
    board: str = ""
    score: int = 0


def _jsonl(tmp_path: Path, rows: list[object], name: str = "tasks.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n\n" for row in rows))  # blank lines are skipped
    return path


def test_jsonl_and_yaml_rows_keep_their_extra_fields_for_the_rubric(tmp_path: Path) -> None:
    yaml_path = tmp_path / "tasks.yaml"
    yaml_path.write_text(
        "- {id: greet, split: train, prompt: Say hello, oracle: [hello], answer: hello}\n"
        "- id: count\n  split: heldout\n  prompt: Count to 2\n  answer: {words: [one, two]}\n  level: 3\n"
    )
    for path in (_jsonl(tmp_path, ROWS), yaml_path):
        greet, count = read_rows(path)
        assert (greet.id, greet.split, greet.oracle, greet.fields) == (
            "greet",
            "train",
            ("hello",),
            {"answer": "hello"},
        )
        assert count.oracle == () and count.fields == {"answer": {"words": ["one", "two"]}, "level": 3}


def test_a_suite_lists_its_splits_and_picks_rows_by_id_or_seed(tmp_path: Path) -> None:
    suite = FileSuite.from_file(_jsonl(tmp_path, ROWS), env="words", action=TextAction, observation=TextObservation)
    assert [t.id for t in suite.tasks("train")] == ["greet"] and suite.tasks("heldout")[0].oracle == ()
    assert suite.pick("count", None).fields["level"] == 3
    assert suite.pick(None, seed=7).id == "greet"  # drawn from the train split


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [{"id": "a", "split": "test", "prompt": "p"}],
            r"tasks.jsonl, line 1: split: Input should be 'train' or 'heldout'",
        ),
        ([ROWS[0], {"id": "b", "split": "train"}], r"tasks.jsonl, line 3: prompt: Field required"),
        ([["not", "a", "mapping"]], r"line 1: a task is a mapping with id, split, prompt, not list"),
        ([], r"has no tasks"),
        ([ROWS[0], ROWS[1], ROWS[0]], r"task ids must be unique; repeated: greet"),
    ],
)
def test_a_bad_row_is_named_by_file_and_line(tmp_path: Path, rows: list[object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_rows(_jsonl(tmp_path, rows))


def test_unreadable_files_say_what_to_use(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"id": "a",\n')
    (tmp_path / "map.yaml").write_text("id: a\n")
    (tmp_path / "tasks.csv").write_text("id,split\n")
    for name, message in [
        ("bad.jsonl", "bad.jsonl, line 1: not JSON"),
        ("map.yaml", "expected a list of tasks"),
        ("tasks.csv", r"use .jsonl, .yaml / .yml, or a directory saved by datasets"),
        ("missing.jsonl", "does not exist"),
    ]:
        with pytest.raises(ConfigError, match=message):
            read_rows(tmp_path / name)


def test_the_action_text_is_the_single_text_field_or_json_for_several(tmp_path: Path) -> None:
    rows = [TaskRow(id="a", split="train", prompt="p")]
    text = FileSuite("t", rows, action=TextAction, observation=TextObservation)
    assert text.parse_action("  go north\n") == {"text": "go north"}
    moves = FileSuite("m", rows, action=MoveAction, observation=BoardObservation)
    assert moves.parse_action('{"dx": 1}') == {"dx": 1}
    for bad, message in [
        ("go north", "expected a JSON object with dx, dy"),
        ("[1, 2]", "expected a JSON object with dx, dy, not"),
        ('{"dx": "far"}', "not a valid action: dx: Input should be a valid integer"),
        ('{"dx": 1, "speed": 2}', "speed: Extra inputs are not permitted"),
    ]:
        with pytest.raises(ActionParseError, match=message):
            moves.parse_action(bad)


def test_an_observation_is_its_single_field_or_json_of_its_fields() -> None:
    rows = [TaskRow(id="a", split="train", prompt="p")]
    text = FileSuite("t", rows, action=TextAction, observation=TextObservation)
    assert text.render_observation({"text": "hi there"}) == "hi there"
    board = FileSuite("b", rows, action=TextAction, observation=BoardObservation)
    assert board.render_observation({"board": "x.o", "score": 2}) == '{"board": "x.o", "score": 2}'


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="datasets is installed")
def test_a_dataset_directory_without_datasets_installed_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs `pip install datasets`"):
        read_rows(tmp_path)


def test_a_saved_hugging_face_dataset_is_a_suite(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    columns = {"id": ["a", "b"], "prompt": ["say a", "say b"], "answer": ["a", "b"]}
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({k: v[:1] for k, v in columns.items()}),
        heldout=datasets.Dataset.from_dict({k: v[1:] for k, v in columns.items()}),
    )
    splits.save_to_disk(str(tmp_path / "splits"))
    assert [(r.id, r.split, r.fields) for r in read_rows(tmp_path / "splits")] == [
        ("a", "train", {"answer": "a"}),
        ("b", "heldout", {"answer": "b"}),
    ]


class CallAction(Action):
    tool: str
    arguments: dict[str, object] = {}


class CallingSuite(FileSuite):
    def tool_call_text(self, name: str, arguments: str) -> str:
        return f'{{"tool": {json.dumps(name)}, "arguments": {arguments or "{}"}}}'


def test_a_file_suite_with_tool_call_text_takes_a_chat_models_tool_calls(tmp_path: Path) -> None:
    path = _jsonl(tmp_path, ROWS)
    plain = FileSuite.from_file(path, env="words", action=TextAction, observation=TextObservation)
    calling = CallingSuite.from_file(path, env="calls", action=CallAction, observation=TextObservation)
    assert isinstance(calling, ToolCallSuite) and not isinstance(plain, ToolCallSuite)
    text = calling.tool_call_text("lookup", '{"word": "hello"}')
    assert calling.parse_action(text) == {"tool": "lookup", "arguments": {"word": "hello"}}
    with pytest.raises(ActionParseError):  # a model's malformed arguments reach it as a parse error
        calling.parse_action(calling.tool_call_text("lookup", '{"word": '))
