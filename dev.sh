#!/usr/bin/env bash
# Set up and run the project on a Debian/Ubuntu machine with Python 3.
#   ./dev.sh demo          the whole pipeline on a generated collection, on this machine
#   ./dev.sh test [ARGS]   lint (ruff), type check (mypy), then the test suite in two processes
#                          (starts the local SLURM cluster first); ARGS go to pytest
#   ./dev.sh bench [--quick]  the benchmarks, each printing a ratio against its baseline
#   ./dev.sh setup         only install what the project needs
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(python3-venv python3-dev tesseract-ocr tesseract-ocr-eng poppler-utils qpdf chromium)
VENV=${VENV:-.venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

install_system_packages() {
    local missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "dev.sh: installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

install_python_packages() {
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q ".[test]"
}

setup() { install_system_packages; install_python_packages; }

case "${1:-}" in
    setup) setup ;;
    demo) shift; setup; exec "$VENV/bin/python" -m pipeline.demo "$@" ;;
    test)
        shift; setup
        "$VENV/bin/ruff" check .
        "$VENV/bin/mypy"
        slurm/dev-cluster.sh start
        export PATH="$PWD/$VENV/bin:$PATH"
        # Two pytest-xdist workers (TEST_WORKERS; -n 0 among ARGS runs one process): most tests wait
        # on subprocesses, SLURM or leases, so two halve the time even on two cores.
        exec "$VENV/bin/python" -m pytest -n "${TEST_WORKERS:-2}" --dist loadgroup "$@" ;;
    bench)
        shift; setup
        if [ "${1:-}" = "--quick" ]; then
            page_count=(--quick); finalize=(--documents 200); s3=(--size-mb 40); text=(--documents 100)
            startup=(--repeat 7); status_=(--documents 20000); base_status=(--documents 20000)
            scale=(--documents 2000); events_=(--events 200000); shards=(--quick)
        else
            page_count=(); finalize=(); s3=(); text=(); startup=(); status_=(); base_status=(); scale=(); events_=()
            shards=()
        fi
        status=0
        "$VENV/bin/python" bench/bench_page_count.py "${page_count[@]}" || status=1
        "$VENV/bin/python" bench/bench_finalize.py "${finalize[@]}" || status=1
        "$VENV/bin/python" bench/bench_s3_count.py "${s3[@]}" || status=1
        "$VENV/bin/python" bench/bench_text_engine.py "${text[@]}" || status=1
        "$VENV/bin/python" bench/bench_startup.py "${startup[@]}" || status=1
        "$VENV/bin/python" bench/bench_shard_status.py "${status_[@]}" || status=1
        "$VENV/bin/python" bench/bench_status.py "${base_status[@]}" || status=1
        "$VENV/bin/python" bench/bench_events.py "${events_[@]}" || status=1
        "$VENV/bin/python" bench/bench_scale.py "${scale[@]}" || status=1
        "$VENV/bin/python" bench/bench_shards.py "${shards[@]}" || status=1
        exit $status ;;
    *) echo "usage: ./dev.sh demo | test [pytest args] | bench [--quick] | setup" >&2; exit 2 ;;
esac
