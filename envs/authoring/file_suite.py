"""Task suites from files: JSONL or YAML rows, or a Hugging Face dataset saved with `save_to_disk`.

    tasks.jsonl   {"id": "greet", "split": "train", "prompt": "Say hello", "oracle": ["hello"], "answer": "hello"}
    tasks.yaml    - {id: greet, split: train, prompt: Say hello, answer: hello}
    a directory   datasets.load_from_disk: one Dataset with a `split` column, or a DatasetDict of train / heldout
                                  │
                                  ▼
                  FileSuite: TaskSuite + pick(task_id, seed) -> TaskRow (extra fields kept for the rubric)

The text a policy emits becomes the environment's Action generically: its single text field,
or a JSON object for an action with several fields. An observation is shown as its single
field, or as JSON of its fields.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

from envs.authoring.tasks import ActionParseError, Task, TaskBook
from hillclimb.errors import ConfigError, validation_problems
from hillclimb.splits import Split

_BASE_ACTION_FIELDS = {"metadata"}
_BASE_OBSERVATION_FIELDS = {"done", "reward", "metadata"}


class TaskRow(Task):
    """One row of a task file: the generic task's fields, plus any others for the rubric (`row.answer`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @cached_property
    def task(self) -> Task:
        return Task(id=self.id, split=self.split, prompt=self.prompt, oracle=self.oracle)

    @property
    def fields(self) -> dict[str, Any]:
        """The row's extra fields (everything but id, split, prompt and oracle)."""
        return dict(self.model_extra or {})


class FileSuite:
    """`envs.authoring.tasks.TaskSuite` over rows from a file, for an environment with the given Action /
    Observation."""

    def __init__(
        self, env: str, rows: Sequence[TaskRow], *, action: type[BaseModel], observation: type[BaseModel]
    ) -> None:
        self.env = env
        self.book = TaskBook(env, rows)
        self._action = action
        self._action_fields = [n for n in action.model_fields if n not in _BASE_ACTION_FIELDS]
        self._observation_fields = [n for n in observation.model_fields if n not in _BASE_OBSERVATION_FIELDS]

    @classmethod
    def from_file(
        cls, path: str | Path, *, env: str, action: type[BaseModel], observation: type[BaseModel]
    ) -> FileSuite:
        return cls(env, read_rows(path), action=action, observation=observation)

    def tasks(self, split: Split) -> list[Task]:
        return self.book.tasks(split)

    def pick(self, task_id: str | None, seed: int | None) -> TaskRow:
        """The row named `task_id`, else one drawn from the train split by `seed`."""
        return self.book.pick(task_id, seed)

    def parse_action(self, text: str) -> dict[str, Any]:
        """The text itself as the action's single field, else a JSON object of its fields."""
        if len(self._action_fields) == 1 and self._action.model_fields[self._action_fields[0]].annotation is str:
            return {self._action_fields[0]: text.strip()}
        try:
            action = json.loads(text)
        except json.JSONDecodeError as e:
            raise ActionParseError(f"expected a JSON object with {', '.join(self._action_fields)}: {e}") from None
        if not isinstance(action, dict):
            raise ActionParseError(f"expected a JSON object with {', '.join(self._action_fields)}, not {text.strip()}")
        try:
            self._action.model_validate(action)
        except pydantic.ValidationError as e:
            raise ActionParseError(f"not a valid action: {validation_problems(e)}") from None
        return action

    def render_observation(self, observation: dict[str, Any]) -> str:
        if len(self._observation_fields) == 1:
            return str(observation.get(self._observation_fields[0], ""))
        return json.dumps({k: observation[k] for k in self._observation_fields if k in observation})


def read_rows(path: str | Path) -> list[TaskRow]:
    """Task rows from a .jsonl, .yaml / .yml file, or a dataset directory; errors name the file and row."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"task file {str(path)!r} does not exist")
    if path.is_dir():
        raw = _dataset_rows(path)
    elif path.suffix == ".jsonl":
        raw = _jsonl_rows(path)
    elif path.suffix in (".yaml", ".yml"):
        raw = _yaml_rows(path)
    else:
        raise ConfigError(f"task file {str(path)!r}: use .jsonl, .yaml / .yml, or a directory saved by datasets")
    if not raw:
        raise ConfigError(f"task file {str(path)!r} has no tasks")
    rows = [_row(path, where, fields) for where, fields in raw]
    repeated = sorted(i for i, n in Counter(row.id for row in rows).items() if n > 1)
    if repeated:
        raise ConfigError(f"{path}: task ids must be unique; repeated: {', '.join(repeated)}")
    return rows


def _row(path: Path, where: str, fields: Any) -> TaskRow:
    if not isinstance(fields, dict):
        raise ConfigError(f"{path}, {where}: a task is a mapping with id, split, prompt, not {type(fields).__name__}")
    try:
        return TaskRow.model_validate(fields)
    except pydantic.ValidationError as e:
        raise ConfigError(f"{path}, {where}: {validation_problems(e)}") from None


def _jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {number}: not JSON: {e}") from None
    return rows


def _yaml_rows(path: Path) -> list[tuple[str, Any]]:
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not YAML: {e}") from None
    if not isinstance(loaded, list):
        raise ConfigError(f"{path}: expected a list of tasks (each `- id: ..., split: ..., prompt: ...`)")
    return [(f"task {index}", row) for index, row in enumerate(loaded, start=1)]


def _dataset_rows(path: Path) -> list[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(
            f"{path} is a directory: reading a saved Hugging Face dataset needs `pip install datasets`"
        ) from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        unknown = sorted(set(loaded) - {"train", "heldout"})
        if unknown:
            raise ConfigError(f"{path}: dataset splits must be train and heldout, not {unknown}")
        return [
            (f"{split} row {i}", {**row, "split": split}) for split in loaded for i, row in enumerate(loaded[split])
        ]
    return [(f"row {i}", row) for i, row in enumerate(loaded)]
