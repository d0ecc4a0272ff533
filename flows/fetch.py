"""The fetch flow: bring the price store up to date, incrementally."""

from pathlib import Path

from prefect import flow

from core.config import DataConfig
from tasks.prices import FetchResult, download_all, fetch_end, open_source, plan_fetches
from tasks.store import read_store, save_prices, store_lock


@flow(name="fetch", flow_run_name="fetch {data.source}")
def fetch(data: DataConfig, home: Path) -> FetchResult:
    """Fetch new rows for every ticker, re-check the overlap, re-fetch re-based histories.

    Raises:
        PipelineError: every requested ticker failed to fetch (nothing was written).
    """
    source = open_source(data.source)
    end = fetch_end(source, data.as_of)
    prices_dir = home / "prices"
    with store_lock(home):
        stored = read_store(prices_dir, data.tickers)
        fetched = download_all(source, plan_fetches(stored, data, end), data)
        update = save_prices(prices_dir, stored, fetched.frames)
        if update.rebased:
            fresh = dict.fromkeys(update.rebased)
            refetched = download_all(source, plan_fetches(fresh, data, end), data)
            save_prices(prices_dir, fresh, refetched.frames, replace=True)
            fetched.update(refetched)
    fetched.end = end
    fetched.require_any(data.tickers)
    return fetched
