"""Reports: `report.md` and figures rendered from results.json and saved predictions alone."""

from mechcheck.report.compare import compare_command
from mechcheck.report.render import render_report, report_command

__all__ = ["compare_command", "render_report", "report_command"]
