"""``python -m pipeline.chunk_job``: the command job scripts run (kept at this name, since scripts of
jobs already submitted or requeued call it); the code is pipeline/executors/chunk_job.py."""
import sys

from pipeline.executors.chunk_job import main

if __name__ == "__main__":
    sys.exit(main())
