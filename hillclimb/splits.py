"""A task suite's splits: the tasks a run trains on, and those held out for evaluation."""

from __future__ import annotations

from typing import Literal

Split = Literal["train", "heldout"]
