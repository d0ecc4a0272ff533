"""Per-ticker statuses that end up in the report's `status` column.

The one list of them: the pipeline's steps and the model's own output
(closecast.models.forecaster, the pyfunc's `status` column) both use these.
"""

from typing import Literal

Status = Literal["ok", "insufficient_history", "fetch_failed", "invalid_data", "stale_data"]

OK: Status = "ok"
INSUFFICIENT_HISTORY: Status = "insufficient_history"
FETCH_FAILED: Status = "fetch_failed"
INVALID_DATA: Status = "invalid_data"
STALE_DATA: Status = "stale_data"

# ticker -> (status, one-line reason); tickers absent from the mapping are ok.
Issues = dict[str, tuple[Status, str]]


def ticker_label(tickers: list[str]) -> str:
    """`AAPL +2` for three tickers, `AAPL` for one, `-` for none: for run names."""
    if not tickers:
        return "-"
    return tickers[0] + (f" +{len(tickers) - 1}" if len(tickers) > 1 else "")


def merge_issues(*issue_maps: Issues) -> Issues:
    """Combine step issues; a ticker keeps the first (earliest step) issue it got."""
    merged: Issues = {}
    for issues in issue_maps:
        for ticker, issue in issues.items():
            merged.setdefault(ticker, issue)
    return merged
