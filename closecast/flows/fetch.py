"""The fetch flow: bring the price store up to date, incrementally."""

from pathlib import Path

from prefect import flow

from closecast.core.config import DataConfig
from closecast.tasks.data.fetch import fetch_end, plan_fetches
from closecast.tasks.data.sources import FetchResult, open_source
from closecast.tasks.data.steps import download_all, read_store, refetch_rebased, save_prices
from closecast.tasks.data.store import store_lock


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
            fetched.update(refetch_rebased(source, update.rebased, prices_dir, data, end))
    fetched.end = end
    fetched.require_any(data.tickers)
    return fetched
