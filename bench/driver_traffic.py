"""What passes through a Ray driver process: every object Ray serializes there (arguments it
sends, objects it puts) or deserializes there (results it gets or awaits), weighed, and the
part of it that is trajectory data (`Trajectory`, `TrajectoryGroup`, `Sample`: token lists).

    with DriverTraffic() as traffic:       # hooks Ray's SerializationContext in this process only
        ...                                # actors are other processes: untouched
    traffic.total_bytes, traffic.trajectory_bytes, traffic.trajectory_objects

A trajectory object is weighed by its pickled size, found wherever it sits in the value
(lists, tuples, dicts, dataclasses, pydantic models). `paused()` leaves a stretch uncounted
(evaluation episodes, which are allowed to come back to the driver).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import threading
from collections.abc import Iterator
from typing import Any

from ray._private.serialization import SerializationContext

_TRAJECTORY_TYPES = ("Trajectory", "TrajectoryGroup", "Sample")
"""By class name: the same hook weighs any commit's classes (bench.driver_load runs two)."""


def _trajectory_objects(value: Any, depth: int = 0) -> Iterator[Any]:
    if depth > 20:
        return
    if type(value).__name__ in _TRAJECTORY_TYPES:
        yield value
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _trajectory_objects(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _trajectory_objects(item, depth + 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _trajectory_objects(getattr(value, field.name), depth + 1)
    elif hasattr(type(value), "model_fields"):  # a pydantic model
        for name in type(value).model_fields:
            yield from _trajectory_objects(getattr(value, name, None), depth + 1)


class DriverTraffic:
    def __init__(self) -> None:
        self.total_bytes = 0
        self.trajectory_bytes = 0
        self.trajectory_objects = 0
        self.paused_trajectory_bytes = 0  # what `paused()` left out, to show the hook sees it
        self._paused = 0
        self._lock = threading.Lock()  # Ray deserializes on its own threads too
        self._originals: dict[str, Any] = {}

    def _weigh(self, value: Any, size: int) -> None:
        found = list(_trajectory_objects(value))
        weight = sum(len(pickle.dumps(obj)) for obj in found)
        with self._lock:
            if self._paused:
                self.paused_trajectory_bytes += weight
                return
            self.total_bytes += size
            self.trajectory_bytes += weight
            self.trajectory_objects += len(found)

    def __enter__(self) -> DriverTraffic:
        serialize, deserialize = SerializationContext.serialize, SerializationContext.deserialize_objects
        self._originals = {"serialize": serialize, "deserialize_objects": deserialize}
        traffic = self

        def counted_serialize(context: Any, value: Any) -> Any:
            serialized = serialize(context, value)
            traffic._weigh(value, int(getattr(serialized, "total_bytes", 0)))
            return serialized

        def counted_deserialize(context: Any, serialized: Any, refs: Any, *args: Any, **kwargs: Any) -> Any:
            values = deserialize(context, serialized, refs, *args, **kwargs)
            for value, (data, *_) in zip(values, serialized, strict=False):
                traffic._weigh(value, len(data) if data is not None else 0)
            return values

        SerializationContext.serialize = counted_serialize  # type: ignore[method-assign]
        SerializationContext.deserialize_objects = counted_deserialize  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._originals.items():
            setattr(SerializationContext, name, original)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
