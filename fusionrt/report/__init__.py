"""The pipeline's report: ``write_report(bundle_dir)`` writes report.md, report.json and PNG plots."""

from fusionrt.report.write import REPORT_JSON, REPORT_MD, collect, write_report

__all__ = ["REPORT_JSON", "REPORT_MD", "collect", "write_report"]
