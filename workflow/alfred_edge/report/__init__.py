"""The report: aggregate every host's benchmark files into reports/results.parquet and
render reports/summary.html (figures in reports/plots/)."""
