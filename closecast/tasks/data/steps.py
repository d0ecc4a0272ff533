"""The data stage's Prefect tasks: download with retries, read and write the store, validate.

Each task wraps the plain function of the same name in its stage module
(`store.read_store`, `validate.validate_prices`, ...) and adds what only
Prefect does: retries, run names, log lines. The logic, and its tests, live
in those modules.
"""

from collections import deque
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd
from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.tasks import exponential_backoff

from closecast.core.config import DataConfig
from closecast.core.errors import InputError
from closecast.core.progress import progress
from closecast.core.statuses import ticker_label
from closecast.tasks.data import store, validate
from closecast.tasks.data.fetch import (
    RETRY_JITTER,
    FetchPlan,
    FetchStopped,
    RateLimit,
    plan_fetches,
    rate_limit_for,
    stopped_message,
)
from closecast.tasks.data.sources import (
    FetchResult,
    PriceSource,
    RateLimitError,
    TransientFetchError,
)
from closecast.tasks.data.store import LoadedPrices, StoreUpdate
from closecast.tasks.data.validate import ValidatedPrices

# Chunks asked at once of a live source and of a local one. yfinance already spreads a
# chunk's tickers over threads of its own, and one chunk at a time lets a rate limit stop
# the fetch at a chunk's end; a local source reads a few chunks at once.
LIVE_IN_FLIGHT, LOCAL_IN_FLIGHT = 1, 4


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
def download_prices(source: PriceSource, plan: FetchPlan, limit: str | None = None) -> FetchResult:
    """Ask the source for one chunk, once the rate limit `limit` (if any) has a slot for
    each of its tickers; rate limits and network errors are retried, each try limited."""
    if limit is not None:
        from prefect.concurrency.sync import rate_limit

        rate_limit(limit, occupy=len(plan.tickers), strict=True)
    return source.download(plan.tickers, plan.start, plan.end)


def download_task(config: DataConfig) -> Task[[PriceSource, FetchPlan, str | None], FetchResult]:
    """`download_prices` with the config's retries: `fetch_retries` more tries, the first
    after `retry_backoff_seconds`, each later one after twice the wait before it."""
    return download_prices.with_options(
        retries=config.fetch_retries,
        retry_delay_seconds=exponential_backoff(config.retry_backoff_seconds),
    )


def apply_rate_limit(limit: RateLimit) -> None:
    """Create the Prefect limit, or set it to this run's numbers (the config wins over an
    edit in the UI). On the ephemeral API it lasts as long as the API does."""
    from prefect import get_client
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(
                limit.name, limit.slots, limit.per_second
            )
        except ObjectAlreadyExists:  # another run created it between the read and the create
            client.upsert_global_concurrency_limit_by_name(
                limit.name, limit.slots, limit.per_second
            )


def _chunk_result(plan: FetchPlan, future: PrefectFuture[FetchResult]) -> tuple[FetchResult, bool]:
    """A finished chunk's frames, or its tickers' one-line failure; and whether it ended
    refused by a rate limit. Bad input (InputError) is raised."""
    try:
        return future.result(), False
    except InputError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        failed = FetchResult(failures={t: f"{t}: {reason}" for t in plan.tickers})
        return failed, isinstance(exc, RateLimitError)


def download_all(
    source: PriceSource,
    plans: list[FetchPlan],
    config: DataConfig,
    on_chunk: Callable[[FetchResult], None] | None = None,
) -> FetchResult:
    """Run every planned download under the source's rate limit, a few chunks at a time,
    handing each chunk to `on_chunk` (to store it) as soon as it arrives.

    A chunk that hits a rate limit or network error is retried (see
    `download_task`); any other error fails it at once. A chunk that fails
    marks only its own tickers fetch_failed; the other chunks go on, unless
    it was still rate-limited after its retries: then no further chunk is
    asked for. A progress bar (log lines where nobody watches) counts the
    tickers done.

    Raises:
        FetchStopped: a chunk was still rate-limited after its retries; the chunks that
            arrived before were handed to `on_chunk`.
        InputError: bad input from the source.
    """
    result = FetchResult()
    if not plans:
        return result
    log = get_run_logger()
    total = sum(len(plan.tickers) for plan in plans)
    limit = rate_limit_for(source, config)
    if limit is not None:
        apply_rate_limit(limit)
        minutes = limit.wait_seconds(total) / 60
        log.info(
            "fetching %d tickers in %d chunks, at most %g a minute (Prefect rate limit %s): %s",
            total, len(plans), config.fetch_rate, limit.name,
            f"at least {minutes:.0f} minutes" if minutes >= 1 else "under a minute of waiting",
        )  # fmt: skip
    download, name = download_task(config), limit.name if limit else None
    in_flight = LIVE_IN_FLIGHT if source.live else LOCAL_IN_FLIGHT
    waiting = deque(plans)
    running: deque[tuple[FetchPlan, PrefectFuture[FetchResult]]] = deque()
    refused = False
    with progress(total, f"fetch {source.name}", unit="tickers", log=log) as advance:
        while running or (waiting and not refused):
            while waiting and not refused and len(running) < in_flight:
                plan = waiting.popleft()
                running.append((plan, download.submit(source, plan, name)))
            plan, future = running.popleft()
            chunk, rate_limited = _chunk_result(plan, future)
            refused = refused or rate_limited
            if on_chunk is not None and chunk.frames:
                on_chunk(chunk)
            result.update(chunk)
            advance(len(plan.tickers))
    if refused:
        fetched = len(result.frames)
        raise FetchStopped(stopped_message(source.name, fetched, total, config.fetch_retries))
    return result


def fetch_into_store(
    source: PriceSource,
    plans: list[FetchPlan],
    prices_dir: Path,
    stored: dict[str, pd.DataFrame | None],
    config: DataConfig,
    replace: bool = False,
) -> tuple[FetchResult, StoreUpdate]:
    """`download_all`, merging and atomically writing each chunk as it arrives (replacing
    whole files with `replace`), so a fetch killed or stopped midway keeps what it got.

    Raises:
        FetchStopped: as `download_all`; the chunks before are stored.
    """
    update = StoreUpdate(added={}, rebased=[])

    def keep(chunk: FetchResult) -> None:
        saved = store.save_prices(prices_dir, stored, chunk.frames, replace)
        update.added.update(saved.added)
        update.rebased += saved.rebased

    try:
        fetched = download_all(source, plans, config, keep)
    finally:
        _log_update(update)
    return fetched, update


def _log_update(update: StoreUpdate) -> None:
    log = get_run_logger()
    log.info("stored %d new rows for %d tickers", sum(update.added.values()), len(update.added))
    if update.rebased:
        log.warning("source re-based history of %s: re-fetching in full", ", ".join(update.rebased))


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
    refetched, _ = fetch_into_store(
        source, plan_fetches(fresh, config, end), prices_dir, fresh, config, replace=True
    )
    return refetched


@task(name="read-store", cache_policy=NO_CACHE)
def read_store(prices_dir: Path, tickers: list[str]) -> dict[str, pd.DataFrame | None]:
    """The stored frames of `tickers` (None where nothing usable is stored).

    An unreadable file is reported by name and read as None, so its ticker's
    whole history is fetched again and the file replaced.
    """
    stored, unreadable = store.read_store(prices_dir, tickers)
    for message in unreadable.values():
        get_run_logger().warning("%s; fetching its whole history again", message)
    return stored


@task(name="load-prices", cache_policy=NO_CACHE)
def load_prices(prices_dir: Path, tickers: list[str], as_of: date | None) -> LoadedPrices:
    """Point-in-time read of the store."""
    loaded = store.load_prices(prices_dir, tickers, as_of)
    get_run_logger().info(
        "as_of %s -> target %s; %d tickers", loaded.as_of, loaded.target_date, len(loaded.frames)
    )
    return loaded


@task(name="validate-prices", cache_policy=NO_CACHE)
def validate_prices(frames: dict[str, pd.DataFrame]) -> ValidatedPrices:
    """Apply the validation rules and log how many rows each rule dropped."""
    result = validate.validate_prices(frames)
    if result.rows_dropped:
        by_reason = result.dropped.groupby("reason")["rows"].sum().to_dict()
        get_run_logger().warning("dropped %d invalid rows: %s", result.rows_dropped, by_reason)
    return result
