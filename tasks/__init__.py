"""The Luigi tasks; thin wrappers over pipeline/."""
from .batch import CreateBatch, Finalize, OCRBatch, PlanChunks, SplitResults
from .download import Download
from .finalize_ready import FinalizeReady
from .metrics import MetricsSummary
from .process_all import ProcessAll
from .report import Report
from .shards import CountPages, Preflight, RunShard, ShardFile, ShardManifest, ShardStatus
from .status import Status

__all__ = [
    "CountPages", "CreateBatch", "Download", "Finalize", "FinalizeReady", "MetricsSummary", "OCRBatch", "PlanChunks",
    "Preflight", "ProcessAll", "Report", "RunShard", "ShardFile", "ShardManifest", "ShardStatus", "SplitResults",
    "Status",
]
