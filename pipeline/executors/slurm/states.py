"""SLURM job states and what each means for a chunk: completed, failed, or still waiting.

These are SLURM's state names; the local executor records its runs with the same names, so
``COMPLETED`` means one thing everywhere: the job ended with exit code 0.
"""
from __future__ import annotations

COMPLETED = "COMPLETED"
FAILED = "FAILED"
TIMEOUT = "TIMEOUT"
FAILED_STATES = frozenset({
    FAILED, TIMEOUT, "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL", "DEADLINE",
})


def base_state(raw: str) -> str:
    """'CANCELLED by 0' -> 'CANCELLED'; 'CANCELLED+' (sacct's truncation mark) -> 'CANCELLED'."""
    words = raw.split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def is_failed(state: str) -> bool:
    return base_state(state) in FAILED_STATES


def is_completed(state: str) -> bool:
    return base_state(state) == COMPLETED


def outcome(state: str) -> str:
    """'completed', 'failed' or 'waiting'. Every other state waits (PENDING, RUNNING, REQUEUED, PREEMPTED,
    SUSPENDED, ... and states this code does not know): only a known failure may fail a chunk."""
    if is_completed(state):
        return "completed"
    return "failed" if is_failed(state) else "waiting"
