"""The report: aggregate every host's benchmark files into reports/results.parquet and
render reports/summary.html (figures in reports/plots/).

The results table has over a hundred columns and a sweep thousands of rows, so the figures
and tables take the columns they show before they iterate over rows or split them into
lines: each row or line would otherwise carry a copy of every column."""
