"""The fetch step: plan the source requests, download them with retries, re-fetch re-based ones.

The sources themselves live in `closecast.tasks.data.sources`; this module decides what to
ask them for and runs the asking as Prefect tasks.
"""

from dataclasses import dataclass
from datetime import date

import pandas as pd

from closecast.core.calendar import session_on_or_before
from closecast.core.config import DataConfig
from closecast.tasks.data.sources import PriceSource
from closecast.tasks.data.store import overlap_start

# Each retry waits up to this fraction longer than its backoff, drawn at random, so chunks
# rate-limited together do not all come back at the same moment.
RETRY_JITTER = 0.5


@dataclass(frozen=True)
class FetchPlan:
    """One source request: these tickers, from `start` (None: all the source has) to `end`."""

    tickers: list[str]
    start: date | None
    end: date | None


def plan_fetches(
    stored: dict[str, pd.DataFrame | None], config: DataConfig, end: date | None
) -> list[FetchPlan]:
    """Group tickers by first date to ask for, in chunks of `config.chunk_size`.

    A ticker already stored asks from `overlap_days` rows before its last
    row (re-checked on merge); a new one from `config.start`, else
    `history_years` before `end`.
    """
    fresh_start = config.start
    if fresh_start is None and end is not None:
        fresh_start = end.replace(year=end.year - config.history_years, day=min(end.day, 28))
    by_start: dict[date | None, list[str]] = {}
    last_session = pd.Timestamp(session_on_or_before(end)) if end is not None else None
    for ticker, frame in stored.items():
        if frame is not None and last_session is not None and frame.index[-1] >= last_session:
            continue  # the store already covers every session this run may see
        first = overlap_start(frame, config.overlap_days)
        start = first.date() if first is not None else fresh_start
        by_start.setdefault(start, []).append(ticker)
    plans = []
    for start, tickers in sorted(by_start.items(), key=lambda kv: (kv[0] is not None, kv[0])):
        for i in range(0, len(tickers), config.chunk_size):
            plans.append(FetchPlan(tickers[i : i + config.chunk_size], start, end))
    return plans


def fetch_end(source: PriceSource, as_of: date | None) -> date | None:
    """Last date to ask for: as_of, else today for a live source, else all it has."""
    if as_of is not None:
        return as_of
    return date.today() if source.live else None
