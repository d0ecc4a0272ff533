"""The fetch flow: bring the price store up to date, incrementally."""

from pathlib import Path

from prefect import flow

from closecast.core.config import DataConfig
from closecast.tasks.data.fetch import fetch_end, plan_fetches
from closecast.tasks.data.sources import FetchResult, open_source
from closecast.tasks.data.steps import fetch_into_store, read_store, refetch_rebased
from closecast.tasks.data.store import store_lock


@flow(name="fetch", flow_run_name="fetch {data.source}")
def fetch(data: DataConfig, home: Path) -> FetchResult:
    """Fetch new rows for every ticker, re-check the overlap, re-fetch re-based histories.

    Each chunk is stored as it arrives, so a fetch killed or stopped midway resumes where it
    was: the next one asks only for tickers the store does not cover up to `end`.

    Raises:
        FetchStopped: the source still refused (HTTP 429) after a chunk's retries; what had
            arrived is stored, and the message says how many tickers and how to resume.
        PipelineError: every requested ticker failed to fetch (nothing was written).
    """
    source = open_source(data.source)
    end = fetch_end(source, data.as_of)
    prices_dir = home / "prices"
    with store_lock(home):
        stored = read_store(prices_dir, data.tickers)
        plans = plan_fetches(stored, data, end)
        fetched, update = fetch_into_store(source, plans, prices_dir, stored, data)
        if update.rebased:
            fetched.update(refetch_rebased(source, update.rebased, prices_dir, data, end))
    fetched.end = end
    fetched.require_any(data.tickers)
    return fetched
