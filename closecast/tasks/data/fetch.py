"""The fetch step: plan the source requests, download them with retries, re-fetch re-based ones.

The sources themselves live in `closecast.tasks.data.sources`; this module decides what to
ask them for and runs the asking as Prefect tasks.
"""

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from prefect import Task, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from closecast.core.calendar import session_on_or_before
from closecast.core.config import DataConfig
from closecast.core.errors import InputError
from closecast.core.statuses import ticker_label
from closecast.tasks.data.sources import FetchResult, PriceSource, TransientFetchError
from closecast.tasks.data.store import overlap_start, save_prices

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


def _download_run_name() -> str:
    from prefect.runtime import task_run

    plan: FetchPlan = task_run.parameters["plan"]
    return f"download {ticker_label(plan.tickers)} from {plan.start or 'start'}"


def _worth_retrying(task: object, task_run: object, state: State) -> bool:
    """Retry rate limits and network errors only: a parse error or a bug fails again the same way.

    A source raises TransientFetchError for a rate limit; OSError covers
    ConnectionError, TimeoutError and the request errors of curl_cffi and
    requests.
    """
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, TransientFetchError | OSError)


@task(
    name="download-prices",
    retry_condition_fn=_worth_retrying,
    retry_jitter_factor=RETRY_JITTER,
    cache_policy=NO_CACHE,
    task_run_name=lambda: _download_run_name(),
)
def download_prices(source: PriceSource, plan: FetchPlan) -> FetchResult:
    """Ask the source for one chunk; rate limits and network errors are retried."""
    return source.download(plan.tickers, plan.start, plan.end)


def download_task(config: DataConfig) -> Task[[PriceSource, FetchPlan], FetchResult]:
    """`download_prices` with the config's retries: `fetch_retries` more tries, the first
    after `retry_backoff_seconds`, each later one after twice the wait before it."""
    return download_prices.with_options(
        retries=config.fetch_retries,
        retry_delay_seconds=exponential_backoff(config.retry_backoff_seconds),
    )


def download_all(source: PriceSource, plans: list[FetchPlan], config: DataConfig) -> FetchResult:
    """Run every planned download (mapped, so a task runner can fan them out).

    A chunk that hits a rate limit or network error is retried (see
    `download_task`); any other error fails it at once. A chunk that fails
    marks only its own tickers fetch_failed; the other chunks go on. Bad
    input (InputError) is raised.
    """
    result = FetchResult()
    if not plans:
        return result
    futures = download_task(config).map(unmapped(source), plans)
    for plan, future in zip(plans, futures, strict=True):
        try:
            result.update(future.result())
        except InputError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.failures.update({t: f"{t}: {reason}" for t in plan.tickers})
    return result


@task(name="refetch-rebased", cache_policy=NO_CACHE)
def refetch_rebased(
    source: PriceSource,
    rebased: list[str],
    prices_dir: Path,
    config: DataConfig,
    end: date | None,
) -> FetchResult:
    """Fetch the whole history of tickers whose source re-based it, and replace their files."""
    fresh: dict[str, pd.DataFrame | None] = dict.fromkeys(rebased)
    refetched = download_all(source, plan_fetches(fresh, config, end), config)
    save_prices(prices_dir, fresh, refetched.frames, replace=True)
    return refetched
