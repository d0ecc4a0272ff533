"""The fetch step's plan: what to ask the source for, how fast, and when to stop asking.

The sources themselves live in `closecast.tasks.data.sources`, and the Prefect tasks that
do the asking in `closecast.tasks.data.steps`; this module holds their plain logic.
"""

from dataclasses import dataclass
from datetime import date

import pandas as pd

from closecast.core.calendar import session_on_or_before
from closecast.core.config import DataConfig
from closecast.core.errors import PipelineError
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


@dataclass(frozen=True)
class RateLimit:
    """A Prefect global concurrency limit used as a rate limit (`prefect.concurrency.sync.
    rate_limit`): `slots` slots, of which `per_second` free up each second; a chunk takes
    one slot per ticker, so the source is asked `per_second` tickers a second on average, in
    bursts of at most one chunk."""

    name: str
    slots: int
    per_second: float

    def wait_seconds(self, tickers: int) -> float:
        """How long asking for `tickers` waits on the limit at least, from a full one."""
        return max(tickers - self.slots, 0) / self.per_second


def rate_limit_for(source: PriceSource, config: DataConfig) -> RateLimit | None:
    """The limit on a live source: `fetch_rate` tickers a minute, shared by every run on the
    same Prefect server (one limit per source). A local source has none."""
    if not source.live:
        return None
    return RateLimit(f"closecast-fetch-{source.name}", config.chunk_size, config.fetch_rate / 60)


class FetchStopped(PipelineError):
    """The source still refused (HTTP 429) after a chunk's retries: the fetch asked it nothing
    more. What had arrived is stored; a later run asks only for the rest."""


def stopped_message(source: str, fetched: int, total: int, retries: int) -> str:
    """One line, short enough for the command's (300 characters): why the fetch stopped,
    how far it got, and how to resume."""
    tries = f"{retries} retr{'y' if retries == 1 else 'ies'}"
    return (
        f"{source} rate limit (HTTP 429) outlasted {tries}, so the fetch stopped asking: "
        f"{fetched:,} of {total:,} tickers fetched and stored; run the same command again "
        f"later (a lower --fetch-rate helps) to fetch only the {total - fetched:,} left"
    )
