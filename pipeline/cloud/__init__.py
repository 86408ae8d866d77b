"""The S3 deployment: storage client, page counting, the shard plan, markers, the shard runner,
status and preflight."""
from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Where a long run reports: a percentage and a line; ``force`` for lines that must be shown
    (a Luigi task passes its visualizer status and a throttled terminal line)."""

    def __call__(self, percent: float, message: str, force: bool = False) -> None: ...


def no_progress(percent: float, message: str, force: bool = False) -> None:
    pass
