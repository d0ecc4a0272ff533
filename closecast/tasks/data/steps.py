"""The data stage's Prefect tasks: download with retries, read and write the store, validate.

Each task wraps the plain function of the same name in its stage module
(`store.read_store`, `validate.validate_prices`, ...) and adds what only
Prefect does: retries, run names, log lines. The logic, and its tests, live
in those modules.
"""

from datetime import date
from pathlib import Path

import pandas as pd
from prefect import Task, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from closecast.core.config import DataConfig
from closecast.core.errors import InputError
from closecast.core.statuses import ticker_label
from closecast.tasks.data import store, validate
from closecast.tasks.data.fetch import RETRY_JITTER, FetchPlan, plan_fetches
from closecast.tasks.data.sources import FetchResult, PriceSource, TransientFetchError
from closecast.tasks.data.store import LoadedPrices, StoreUpdate
from closecast.tasks.data.validate import ValidatedPrices


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


@task(name="save-prices", cache_policy=NO_CACHE)
def save_prices(
    prices_dir: Path,
    stored: dict[str, pd.DataFrame | None],
    fetched: dict[str, pd.DataFrame],
    replace: bool = False,
) -> StoreUpdate:
    """Merge and atomically write fetched prices."""
    update = store.save_prices(prices_dir, stored, fetched, replace)
    log = get_run_logger()
    log.info("stored %d new rows for %d tickers", sum(update.added.values()), len(update.added))
    if update.rebased:
        log.warning("source re-based history of %s: re-fetching in full", ", ".join(update.rebased))
    return update


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
