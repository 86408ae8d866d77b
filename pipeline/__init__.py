"""OCR pipeline for large PDF collections, driven by Luigi.

``luigi --module pipeline <Task>`` finds every task here; the code doing the work lives in the
modules of this package, the tasks in the ``tasks`` package.
"""
from tasks import *  # noqa: F401,F403  (registers the tasks with Luigi)
