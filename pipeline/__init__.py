"""OCR pipeline for large PDF collections, driven by Luigi.

``luigi --module pipeline <Task>`` finds every task here; the code doing the work lives in the
modules of this package, the tasks in the ``tasks`` package. Importing it also sets up the run
(Luigi defaults, start-up checks, stop at the first failure): see pipeline/run_control.py.

``python -m pipeline.<tool>`` (a chunk job on a compute node, the shard status command) needs none
of that: while Python locates such a module, ``sys.argv[0]`` is ``"-m"``, and Luigi and the tasks
are then not imported, so a chunk job starts in a fraction of the time. The same holds for a
``python -c`` program (``sys.argv[0]`` is ``"-c"``): the isolation workers' server is one, started
by every chunk job, and importing Luigi and the tasks there doubled the CPU time of a chunk's start.
"""
import sys

if sys.argv[:1] not in (["-m"], ["-c"]):
    from pipeline import run_control
    from tasks import *  # noqa: F403  (registers the tasks with Luigi)

    run_control.install()
