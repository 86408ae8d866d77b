#!/usr/bin/env bash
# Set up and run the project on a Debian/Ubuntu machine with Python 3.
#   ./dev.sh demo          the whole pipeline on a generated collection, on this machine
#   ./dev.sh test [ARGS]   the test suite (starts the local SLURM cluster first); ARGS go to pytest
#   ./dev.sh setup         only install what the project needs
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(python3-venv python3-dev tesseract-ocr tesseract-ocr-eng poppler-utils qpdf)
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
        slurm/dev-cluster.sh start
        export PATH="$PWD/$VENV/bin:$PATH"
        exec "$VENV/bin/python" -m pytest "$@" ;;
    *) echo "usage: ./dev.sh demo | test [pytest args] | setup" >&2; exit 2 ;;
esac
