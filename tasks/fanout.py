"""Per-ticker fan-out: map a step over tickers so the flow's task runner can spread it.

The steps themselves take a dict of frames (`validate_prices`,
`build_features`); here each mapped run gets a one-ticker dict, its run is
named after its ticker, and the parts are combined back into one result.
With the default thread pool the tickers run concurrently in threads; with
`--task-runner dask` they run on a Dask cluster.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import pandas as pd
from prefect import Task, unmapped

from tasks.features import build_features
from tasks.validate import ValidatedPrices, validate_prices

R = TypeVar("R")


def _named_after_ticker(step: Task[..., R]) -> Callable[..., str]:
    def name(parameters: dict[str, Any]) -> str:
        return f"{step.name} {next(iter(parameters.get('frames') or {}), '-')}"

    return name


def map_tickers(step: Task[..., R], frames: dict[str, pd.DataFrame], *args: Any) -> list[R]:
    """Run `step(frames={ticker: frame}, *args)` once per ticker, mapped; results in ticker order.

    A ticker whose run fails raises here, as the step would have unmapped.
    """
    if not frames:
        return []
    named = step.with_options(task_run_name=_named_after_ticker(step))
    parts = [{ticker: frames[ticker]} for ticker in sorted(frames)]
    futures = named.map(parts, *[unmapped(a) for a in args])
    return [future.result() for future in futures]


def combine_validated(parts: list[ValidatedPrices]) -> ValidatedPrices:
    """One ValidatedPrices from per-ticker ones."""
    combined = ValidatedPrices()
    dropped = [p.dropped for p in parts if len(p.dropped)]
    for part in parts:
        combined.frames.update(part.frames)
        combined.issues.update(part.issues)
    if dropped:
        combined.dropped = pd.concat(dropped, ignore_index=True)
    return combined


def validate_each(frames: dict[str, pd.DataFrame]) -> ValidatedPrices:
    """`validate_prices`, mapped over tickers."""
    return combine_validated(map_tickers(validate_prices, frames))


def features_each(frames: dict[str, pd.DataFrame], features: list[str]) -> dict[str, pd.DataFrame]:
    """`build_features`, mapped over tickers."""
    combined: dict[str, pd.DataFrame] = {}
    for part in map_tickers(build_features, frames, features):
        combined.update(part)
    return combined
