"""Lets ``luigi --module pipeline Finalize --batch 7`` parse.

Luigi reads its command line twice without knowing the task (once before importing ``--module``,
once after) only to find ``--module`` and the task name. In those passes Luigi's own
``--batch-email-*`` options make ``--batch`` an ambiguous abbreviation and argparse exits. The
startup hook ocr_pipeline_luigi.pth imports this module when the program is ``luigi``; it turns
off abbreviations for those two passes only. The final parse, which knows the task and so has
its ``--batch`` option, is unchanged.
"""
from __future__ import annotations


def install() -> None:
    from luigi.cmdline_parser import CmdlineParser

    build = CmdlineParser._build_parser
    if getattr(build, "_exact_first_passes", False):
        return

    def build_parser(root_task=None, help_all=False):
        parser = build(root_task=root_task, help_all=help_all)
        if root_task is None:
            parser.allow_abbrev = False
        return parser

    build_parser._exact_first_passes = True  # type: ignore[attr-defined]
    CmdlineParser._build_parser = staticmethod(build_parser)


install()
