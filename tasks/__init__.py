"""The Luigi tasks; thin wrappers over pipeline/."""
from .batch import CreateBatch, Finalize, OCRBatch, PlanChunks, SplitResults
from .download import Download
from .process_all import ProcessAll

__all__ = ["CreateBatch", "Download", "Finalize", "OCRBatch", "PlanChunks", "ProcessAll", "SplitResults"]
