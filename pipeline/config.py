"""Settings read from luigi.cfg (the file named by LUIGI_CONFIG_PATH, as Luigi does).

Each class is one section; luigi.cfg in the repository documents every key. The package also
supplies defaults for some of Luigi's own settings (exit codes, worker) that a site's file leaves out.
"""
from __future__ import annotations

import configparser
from typing import Any

import luigi

from pipeline import engines, lease


class _Section(luigi.Config):
    """A luigi.Config whose section name is given by ``section`` instead of the class name."""

    section = ""

    @classmethod
    def get_task_family(cls) -> str:
        return cls.section or cls.__name__


class PipelineConfig(_Section):
    section = "pipeline"
    base_dir = luigi.Parameter(default="data", description="root of the stage folders")
    collection = luigi.Parameter(default="", description="the name luigid tells this base_dir's tasks apart "
                                 "by; '' = the name recorded in base_dir by its first run")
    shard_width = luigi.IntParameter(default=2, description="hex digits of the <ab> fan-out folder; 0 = off")
    batch_size = luigi.IntParameter(default=2000, description="most documents in one new batch")
    batch_pages = luigi.IntParameter(default=150_000, description="most pages in one new batch")
    workers = luigi.IntParameter(default=4, description="threads for per-document I/O work")
    lease_seconds = luigi.FloatParameter(default=lease.DEFAULT_SECONDS, description="stage locks: a lease "
                                         "not renewed for this long (its holder hung or its host died) is "
                                         "taken over; renewed every third of it")
    create_base_dir = luigi.BoolParameter(default=False, description="create base_dir when it does not exist; "
                                          "default: a missing base_dir stops the run (a typo or an unmounted volume)")
    events_compact_mb = luigi.FloatParameter(default=64.0, description="ProcessAll and OCRBatch compact "
                                             "_manifests/events.ndjson when it holds more (MiB); 0 = never")


class DownloadConfig(_Section):
    section = "download"
    source = luigi.Parameter(default="", description="local folder, file of URLs, or s3://bucket/prefix/")
    timeout = luigi.FloatParameter(default=60.0, description="seconds per HTTP request")


ENGINES = tuple(engines.ENGINES)  # the names of the engine registry


class OCRConfig(_Section):
    section = "ocr"
    executor = luigi.ChoiceParameter(choices=["local", "slurm"], default="local")
    engine = luigi.ChoiceParameter(choices=ENGINES, default="tesseract")
    pages_per_chunk = luigi.IntParameter(default=1500)
    parallel_chunks = luigi.IntParameter(default=0, description="local executor: chunks run at once; 0 = "
                                         "automatic, from the engine, the cores and the memory available")
    engine_workers = luigi.IntParameter(default=0, description="pages OCRed (tesseract) or documents "
                                        "read (text) at once; 0 = all cores")
    tesseract_lang = luigi.Parameter(default="eng")
    tesseract_dpi = luigi.IntParameter(default=300)
    olmocr_python = luigi.Parameter(default="python", description="interpreter with olmocr installed")
    olmocr_args = luigi.Parameter(default="", description="extra arguments for olmocr.pipeline")
    command = luigi.Parameter(
        default="",
        description="engine=command: argument template with {chunk_list} {workspace} {output}",
    )
    max_page_error_rate = luigi.FloatParameter(default=0.004)
    document_timeout = luigi.FloatParameter(default=120.0, description="seconds of in-process work on one PDF "
                                            "(text layer, page count) before it fails alone; 0 = no limit")
    document_memory_mb = luigi.IntParameter(default=2048, description="memory (MiB) of that work on one PDF, "
                                            "and of each pdftoppm/tesseract process; 0 = no limit")


class BackpressureConfig(_Section):
    section = "backpressure"
    max_waiting_documents = luigi.IntParameter(default=20_000, description="Download pauses above this")
    min_free_gb = luigi.FloatParameter(default=5.0, description="Download pauses below this free space")
    max_open_batches = luigi.IntParameter(default=4, description="ProcessAll opens no batch above this")


class S3Config(_Section):
    section = "s3"
    endpoint_url = luigi.Parameter(default="", description="S3-compatible endpoint (MinIO, moto); '' = AWS")
    region = luigi.Parameter(default="", description="region name; '' = from the profile or environment")
    profile = luigi.Parameter(default="", description="credentials profile; '' = boto3's standard chain")
    max_pool_connections = luigi.IntParameter(default=64, description="HTTP connections; raised to --max-workers")
    retry_mode = luigi.ChoiceParameter(choices=["standard", "adaptive"], default="standard",
                                       description="botocore retries with backoff on throttling and 5xx")
    max_attempts = luigi.IntParameter(default=8, description="attempts per request, first one included")
    connect_timeout = luigi.FloatParameter(default=10.0, description="seconds to open a connection")
    read_timeout = luigi.FloatParameter(default=60.0, description="seconds to wait for response bytes")
    range_block_bytes = luigi.IntParameter(default=4096, description="ranged page counting: bytes per block")
    shard_prefix = luigi.Parameter(default="", description="where shard_K.txt and shard_summary.json live")
    status_prefix = luigi.Parameter(default="", description="per-document .done/.failed markers, shard markers")
    output_prefix = luigi.Parameter(default="", description="per-document outputs go under <prefix>/<bucket>/<key>/")
    work_dir = luigi.Parameter(default="work", description="node-local folder for downloads and engine work")
    engine = luigi.Parameter(default="", description="per-document engine: olmocr, tesseract, text, or command "
                             "(the template below); '' = [ocr] engine")
    command = luigi.Parameter(default="", description="engine=command: argument template, placeholders "
                              "{uri} {input} {workdir} {outdir} {output} {shard}; never run by a shell")
    parallel_documents = luigi.IntParameter(default=2, description="documents processed at once on a node")
    document_attempts = luigi.IntParameter(default=3, description="runs a failing document gets before it "
                                           "stays .failed")
    document_timeout = luigi.FloatParameter(default=0.0, description="seconds per document command; 0 = no limit")
    claim_lease_seconds = luigi.FloatParameter(default=600.0, description="a document's claim lapses when its "
                                               "node does not renew it for this long (renewed every third)")
    max_claim_attempts = luigi.IntParameter(default=3, description="claims of one document, across nodes, that "
                                            "may end without an outcome (node died, lease lost) before it is "
                                            "marked .failed with their history")
    steal = luigi.BoolParameter(default=False, description="RunShard: once its own shard has nothing left to "
                                "claim, take documents from the shard with the most pages remaining")
    node_name = luigi.Parameter(default="", description="this node's name in claims and ShardStatus; '' = host name")
    min_root_free_gb = luigi.FloatParameter(default=5.0, description="Preflight: free space needed on /")
    min_work_free_gb = luigi.FloatParameter(default=50.0, description="Preflight: free space needed on work_dir")


class SlurmConfig(_Section):
    section = "slurm"
    partition = luigi.Parameter(default="", description="sbatch --partition; '' = the cluster's default")
    account = luigi.Parameter(default="", description="sbatch --account; '' = the user's default")
    gres = luigi.Parameter(default="", description="sbatch --gres, e.g. gpu:1; '' = none")
    cpus_per_task = luigi.IntParameter(default=0, description="sbatch --cpus-per-task; 0 = SLURM's default")
    mem = luigi.Parameter(default="", description="sbatch --mem, e.g. 32G; '' = SLURM's default")
    extra_args = luigi.Parameter(default="", description="more sbatch arguments, split like a shell would "
                                 "(never run by one), e.g. --qos=high --constraint=a100")
    directives = luigi.Parameter(default="", description="extra #SBATCH lines for the job script, one a line "
                                 "without '#SBATCH', e.g. --qos=high; sbatch arguments above take precedence")
    env_setup = luigi.Parameter(default="", description="lines the job script runs before the chunk, "
                                "e.g. module load cuda")
    array_throttle = luigi.IntParameter(default=0, description="most array tasks running at once (%N); 0 = no limit")
    # Walltime of a chunk = (base + per_page * pages) * (1 + buffer), capped by the partition's MaxTime.
    walltime_base_seconds = luigi.FloatParameter(default=300.0, description="walltime: fixed part (start-up)")
    walltime_seconds_per_page = luigi.FloatParameter(default=6.0, description="walltime: seconds per page")
    walltime_buffer = luigi.FloatParameter(default=0.2, description="walltime: safety margin (0.2 = +20%)")
    walltime_model = luigi.ChoiceParameter(choices=["fixed", "fitted"], default="fixed",
                                           description="fitted: base and seconds/page from this base_dir's "
                                           "metrics (least squares over completed chunks)")
    walltime_fit_min_chunks = luigi.IntParameter(default=5, description="fitted: completed chunks needed "
                                                 "before the fit replaces the fixed values")
    max_retries = luigi.IntParameter(default=2, description="runs again of a failed chunk (SLURM and local "
                                     "executor) before it is split in halves to find the document that fails")
    timeout_walltime_factor = luigi.FloatParameter(default=1.5, description="walltime multiplier after a TIMEOUT")
    poll_initial_seconds = luigi.FloatParameter(default=10.0, description="first status query after a submission")
    poll_max_seconds = luigi.FloatParameter(default=300.0, description="longest wait between status queries")
    poll_growth = luigi.FloatParameter(default=1.5, description="interval multiplier while nothing changes")
    max_query_failures = luigi.IntParameter(default=10, description="failed status queries in a row before "
                                            "OCRBatch gives up (jobs keep running; a rerun re-attaches)")
    lost_after_seconds = luigi.FloatParameter(default=900.0, description="a task neither sacct nor squeue "
                                              "reports for this long after its submission counts as failed")
    command_timeout = luigi.FloatParameter(default=120.0, description="seconds one sbatch/sacct/... call may take")
    cancel_on_exit = luigi.BoolParameter(default=False, description="scancel the batch's jobs when OCRBatch "
                                         "is stopped (SIGTERM, Ctrl-C); default: leave them, a rerun re-attaches")


class StatusConfig(_Section):
    section = "status"
    disk_threshold_percent = luigi.FloatParameter(default=90.0, description="Status: a problem when more of "
                                                  "base_dir's volume (bytes or inodes) is used")
    stalled_hours = luigi.FloatParameter(default=6.0, description="Status: a problem when nothing progressed "
                                         "for this long while work waits")
    stale_job_hours = luigi.FloatParameter(default=24.0, description="Status: a problem when a chunk's job is "
                                           "pending or running (a local chunk silent) for this long")


SECTIONS: tuple[type[_Section], ...] = (
    PipelineConfig, DownloadConfig, OCRConfig, BackpressureConfig, S3Config, SlurmConfig, StatusConfig,
)

# Luigi's own settings as this package needs them, used where the site's luigi.cfg does not set them:
# exit codes that tell cron a failure (Luigi's default is 0), and a worker that waits while another
# site's worker runs a task it needs (the first failure still ends the run: see pipeline/run_control.py).
LUIGI_DEFAULTS: dict[str, dict[str, str]] = {
    "retcode": {"already_running": "10", "missing_data": "20", "not_run": "25", "task_failed": "30",
                "scheduling_error": "35", "unhandled_exception": "40"},
    "worker": {"keep_alive": "true"},
}
# Older spellings Luigi still reads for the same setting: a site that uses one has set it.
_LUIGI_ALIASES = {("worker", "keep_alive"): ("core", "worker-keep-alive")}


def add_luigi_defaults(parser: Any) -> list[str]:
    """Put LUIGI_DEFAULTS into Luigi's config parser where the site did not set them; returns what was added."""
    added = []
    for section, values in LUIGI_DEFAULTS.items():
        for key, value in values.items():
            alias = _LUIGI_ALIASES.get((section, key))
            if parser.has_option(section, key) or (alias and parser.has_option(*alias)):
                continue
            parser.set(section, key, value)
            added.append(f"[{section}] {key}")
    return added


# Luigi reads the central scheduler's address from [core] scheduler_host, scheduler_port and
# scheduler_url, and from their older names default-scheduler-host/-port/-url when those are not set;
# but its check for keys no setting reads knows only the current names, and warns about the older
# ones (UnconsumedParameterWarning) on every run of a site that uses them.
_SCHEDULER_KEYS = {"default_scheduler_host": "scheduler_host", "default_scheduler_port": "scheduler_port",
                   "default_scheduler_url": "scheduler_url"}


def rename_scheduler_keys(parser: Any) -> list[str]:
    """Give [core] values under an older scheduler key name (dashes or underscores) the current name,
    in Luigi's parser (not in the file), where the current name is not set: Luigi then reads the same
    address and has no key left to warn about. Returns the older names moved."""
    if not parser.has_section("core"):
        return []
    moved = []
    for key in [k for k in parser.options("core") if k not in parser.defaults()]:
        current = _SCHEDULER_KEYS.get(key.replace("-", "_"))
        if current is None or parser.has_option("core", current):  # Luigi's has_option knows both spellings
            continue  # not an older name, or set under its current name too: Luigi rightly warns it is unread
        value = configparser.RawConfigParser.get(parser, "core", key, raw=True)
        parser.remove_option("core", key)
        parser.set("core", current, value)
        moved.append(key)
    return moved


def invalid_values(parser: Any) -> list[str]:
    """One line per value of the pipeline's sections that cannot be read, saying what is accepted."""
    problems = []
    for section in SECTIONS:
        for name, param in section.get_params():
            if not parser.has_option(section.section, name):
                continue
            try:
                raw = parser.get(section.section, name)
                param.normalize(param.parse(raw))
            except configparser.Error as exc:
                problems.append(f"[{section.section}] {name} cannot be read: {exc}")
            except (ValueError, TypeError) as exc:
                choices = getattr(param, "_choices", None)  # a ChoiceParameter's choices (else Luigi's message)
                accepted = f"use one of {', '.join(sorted(map(str, choices)))}" if choices else str(exc)
                problems.append(f"[{section.section}] {name} = {raw!r} is not valid: {accepted}")
    engine = parser.get("s3", "engine") if parser.has_option("s3", "engine") else ""
    if engine and engine not in ENGINES:
        problems.append(f"[s3] engine = {engine!r} is not valid: use one of {', '.join(sorted(ENGINES))}, "
                        "or leave it empty for [ocr] engine")
    return problems
