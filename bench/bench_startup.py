"""Start-up of a chunk job: ``python -m pipeline.chunk_job --help`` against ``python -c pass``.

    python bench/bench_startup.py [--repeat 21]

Every array element starts the chunk job in a fresh interpreter, so its start-up is paid once per
chunk and attempt. Both commands run alternately ``--repeat`` times in this run; the medians and
their ratio are printed. The job must not import Luigi, the tasks or the SLURM client
(pipeline/__init__.py skips the tasks when Python runs one of its modules with -m).

Before the code was split by concern (chunk_job importing Luigi and every task), on this machine:
0.636 s median, 26.9x the bare interpreter.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -m pipeline.chunk_job --help": [sys.executable, "-m", "pipeline.chunk_job", "--help"],
}
HEAVY = ("luigi", "tasks", "pipeline.config", "sh", "boto3")  # modules a chunk job must not load


def seconds(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    return time.perf_counter() - start


def loaded_modules(env: dict[str, str]) -> set[str]:
    """Top-level names of what the chunk job imports (python -X importtime)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "pipeline.chunk_job", "--help"],
                            capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():  # warm the file cache once
        seconds(command, env)
    for n in range(args.repeat):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command, env))
        print(f"\r{n + 1}/{args.repeat} rounds", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:40s} median {median:.3f} s (min {min(times[name]):.3f}, max {max(times[name]):.3f})")
    baseline, job = medians["python -c pass"], medians["python -m pipeline.chunk_job --help"]
    print(f"chunk job start-up: {job:.3f} s, {job / baseline:.1f}x the bare interpreter "
          f"(before: 0.636 s, 26.9x)")
    heavy = sorted(m for m in loaded_modules(env) if m.split(".")[0] in HEAVY or m in HEAVY)
    print("heavy modules loaded: " + (", ".join(heavy) if heavy else "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
