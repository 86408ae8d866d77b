"""OCR pipeline for large PDF collections, driven by Luigi.

``luigi --module pipeline <Task>`` finds every task here; the code doing the work lives in the
modules of this package, the tasks in the ``tasks`` package. Importing it also sets up the run
(Luigi defaults, start-up checks, stop at the first failure): see tasks/command_line.py.
"""
from tasks import *  # noqa: F401,F403  (registers the tasks with Luigi)
from tasks import command_line

command_line.install()
