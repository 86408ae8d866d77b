"""The built-in demo: a generated collection carried through the whole pipeline on this machine.

    python -m pipeline.demo [--dir demo-run] [--engine tesseract]

Writes a sample collection (born-digital PDFs, image-only scans, and broken files), a luigi.cfg
for it, and runs ``luigi --module pipeline ProcessAll --local-scheduler`` exactly as cron would.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline import samples

CONFIG = """\
[retcode]
task_failed = 30
scheduling_error = 35
unhandled_exception = 40
missing_data = 20

[core]
autoload_range = false

[pipeline]
base_dir = {base}
# The demo starts from an empty folder; a real site's base_dir already exists.
create_base_dir = true
workers = 4

[download]
source = {incoming}

[ocr]
executor = local
engine = {engine}
# Small chunks so that the demo shows several chunks running side by side.
pages_per_chunk = 8
parallel_chunks = 2
engine_workers = 1

[backpressure]
min_free_gb = 0.5
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the pipeline on a generated sample collection.")
    parser.add_argument("--dir", type=Path, default=Path("demo-run"), help="folder for everything (replaced)")
    parser.add_argument("--engine", default="tesseract", choices=["tesseract", "text"])
    parser.add_argument("--documents", type=int, default=12, help="born-digital documents to generate")
    parser.add_argument("--scanned", type=int, default=4, help="image-only documents to generate")
    args = parser.parse_args(argv)
    root = args.dir.absolute()
    if root.exists():
        shutil.rmtree(root)
    incoming = root / "incoming"
    made = samples.make_collection(incoming, born_digital=args.documents, scanned=args.scanned)
    broken = sorted(name for name, (kind, _) in made.items() if kind == "broken")
    print(f"demo: generated {len(made)} PDFs in {incoming} ({len(broken)} broken on purpose: {', '.join(broken)})")
    config = root / "luigi.cfg"
    config.write_text(CONFIG.format(base=root / "data", incoming=incoming, engine=args.engine))
    luigi = Path(sys.executable).with_name("luigi")
    command = [str(luigi) if luigi.exists() else "luigi", "--module", "pipeline", "ProcessAll",
               "--local-scheduler", "--workers", "2", "--log-level", "WARNING"]
    print(f"demo: LUIGI_CONFIG_PATH={config} {' '.join(command)}", flush=True)
    result = subprocess.run(command, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)}, cwd=root)
    if result.returncode:
        print(f"demo: luigi exited with {result.returncode}; see the messages above", file=sys.stderr)
        return result.returncode
    print(f"demo: finished. Results under {root / 'data' / '05_processed'}.\n"
          f"demo: run it again and it finds nothing to do:\n"
          f"      LUIGI_CONFIG_PATH={config} {' '.join(command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
