"""The offline HTML report of a run directory.

>>> from emoscope.report import write_report
>>> write_report("runs/demo")                                  # doctest: +SKIP
PosixPath('runs/demo/report.html')
"""

from emoscope.report.build import render_report, write_report

__all__ = ["write_report", "render_report"]
