"""Settings read from luigi.cfg (the file named by LUIGI_CONFIG_PATH, as Luigi does).

Each class is one section; luigi.cfg in the repository documents every key.
"""
from __future__ import annotations

import luigi


class _Section(luigi.Config):
    """A luigi.Config whose section name is given by ``section`` instead of the class name."""

    section = ""

    @classmethod
    def get_task_family(cls) -> str:
        return cls.section or cls.__name__


class PipelineConfig(_Section):
    section = "pipeline"
    base_dir = luigi.Parameter(default="data", description="root of the stage folders")
    shard_width = luigi.IntParameter(default=2, description="hex digits of the <ab> shard folder; 0 = off")
    batch_size = luigi.IntParameter(default=1000, description="most documents in one new batch")
    batch_pages = luigi.IntParameter(default=150_000, description="most pages in one new batch")
    workers = luigi.IntParameter(default=4, description="threads for per-document I/O work")


class DownloadConfig(_Section):
    section = "download"
    source = luigi.Parameter(default="", description="local folder, file of URLs, or s3://bucket/prefix/")
    timeout = luigi.FloatParameter(default=60.0, description="seconds per HTTP request")


class OCRConfig(_Section):
    section = "ocr"
    executor = luigi.ChoiceParameter(choices=["local", "slurm"], default="local")
    engine = luigi.ChoiceParameter(choices=["olmocr", "tesseract", "text", "command"], default="tesseract")
    pages_per_chunk = luigi.IntParameter(default=1500)
    parallel_chunks = luigi.IntParameter(default=1, description="local executor: chunks run at once")
    engine_workers = luigi.IntParameter(default=0, description="pages OCRed at once; 0 = all cores")
    tesseract_lang = luigi.Parameter(default="eng")
    tesseract_dpi = luigi.IntParameter(default=300)
    olmocr_python = luigi.Parameter(default="python", description="interpreter with olmocr installed")
    olmocr_args = luigi.Parameter(default="", description="extra arguments for olmocr.pipeline")
    command = luigi.Parameter(
        default="",
        description="engine=command: argument template with {chunk_list} {workspace} {output}",
    )
    max_page_error_rate = luigi.FloatParameter(default=0.004)


class BackpressureConfig(_Section):
    section = "backpressure"
    max_waiting_documents = luigi.IntParameter(default=20_000, description="Download pauses above this")
    min_free_gb = luigi.FloatParameter(default=5.0, description="Download pauses below this free space")
    max_open_batches = luigi.IntParameter(default=4, description="ProcessAll opens no batch above this")
