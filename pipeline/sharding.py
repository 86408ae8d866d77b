"""``python -m pipeline.sharding status``: the shard status command line (kept at this name); the
code is in pipeline/cloud/status.py."""
import sys

from pipeline.cloud.status import main

if __name__ == "__main__":
    sys.exit(main())
