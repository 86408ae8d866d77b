"""pipeline.executors.slurm.states: which SLURM states fail a chunk, which complete it, and which wait."""
from __future__ import annotations

import pytest

from pipeline.executors.slurm import states as slurm


@pytest.mark.parametrize("raw, expected", [
    ("COMPLETED", "completed"),
    ("FAILED", "failed"), ("TIMEOUT", "failed"), ("OUT_OF_MEMORY", "failed"), ("NODE_FAIL", "failed"),
    ("CANCELLED", "failed"), ("CANCELLED by 0", "failed"), ("CANCELLED+", "failed"),
    ("BOOT_FAIL", "failed"), ("DEADLINE", "failed"),
    ("PENDING", "waiting"), ("RUNNING", "waiting"), ("REQUEUED", "waiting"), ("PREEMPTED", "waiting"),
    ("CONFIGURING", "waiting"), ("COMPLETING", "waiting"), ("SUSPENDED", "waiting"), ("RESIZING", "waiting"),
    # A state this client does not know never fails a chunk on its own.
    ("SPECIAL_EXIT", "waiting"), ("", "waiting"),
])
def test_outcome_of_states(raw: str, expected: str) -> None:
    assert slurm.outcome(raw) == expected


def test_base_state_drops_who_cancelled() -> None:
    assert slurm.base_state("CANCELLED by 1234") == "CANCELLED"
    assert slurm.is_failed("CANCELLED by 0") and slurm.outcome("CANCELLED by 0") != "waiting"
    assert slurm.is_completed("COMPLETED") and slurm.outcome("PREEMPTED") == "waiting"


