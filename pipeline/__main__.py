"""``python -m pipeline status [--json]``: the operator's status view without Luigi's scheduler.

Python imports the package with ``sys.argv[0] == "-m"``, so the tasks are not loaded (see
pipeline/__init__.py); the code is in pipeline/ops/status.py.
"""
import sys

from pipeline.ops.status import main

if __name__ == "__main__":
    sys.exit(main())
