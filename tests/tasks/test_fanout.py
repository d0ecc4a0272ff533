import pandas as pd
import pytest

from closecast.tasks.data.validate import ValidatedPrices
from closecast.tasks.modeling.fanout import combine_validated, split_tickers


def _frames(n: int) -> dict[str, pd.DataFrame]:
    return {f"T{i:03d}": pd.DataFrame({"close": [float(i)]}) for i in range(n)}


@pytest.mark.parametrize(
    ("n", "max_parts", "sizes"),
    [(3, 16, [1, 1, 1]), (16, 16, [1] * 16), (40, 16, [3] * 13 + [1]), (505, 16, [32] * 15 + [25])],
)
def test_split_tickers_is_per_ticker_until_there_are_too_many(
    n: int, max_parts: int, sizes: list[int]
) -> None:
    """One ticker per part up to max_parts; then equal groups, every ticker once, in order."""
    frames = _frames(n)
    parts = split_tickers(frames, max_parts)
    assert [len(p) for p in parts] == sizes
    assert [t for p in parts for t in p] == sorted(frames)


def test_combine_validated_keeps_every_parts_frames_drops_and_issues() -> None:
    """Frames, dropped-row counts and issues of all parts end up in one result."""
    a = ValidatedPrices(
        frames={"AAA": pd.DataFrame({"close": [1.0]})},
        dropped=pd.DataFrame({"ticker": ["AAA"], "reason": ["bad_volume"], "rows": [2]}),
    )
    b = ValidatedPrices(issues={"BBB": ("invalid_data", "all 3 rows failed validation")})
    combined = combine_validated([a, b])
    assert list(combined.frames) == ["AAA"]
    assert combined.issues == {"BBB": ("invalid_data", "all 3 rows failed validation")}
    assert combined.rows_dropped == 2


@pytest.mark.usefixtures("prefect_harness")
def test_the_thread_pool_runs_a_step_in_one_part_and_dask_in_many() -> None:
    """In Prefect's thread pool (the default) a step is one task run over every ticker, as
    outside a flow; a runner of processes (Dask) gets MAX_PARTS parts."""
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from closecast.tasks.modeling.fanout import MAX_PARTS, parts_for_runner

    @flow
    def threads() -> int:
        return parts_for_runner()

    assert parts_for_runner() == 1
    assert threads() == 1
    assert MAX_PARTS > 1
    seen = {}

    @flow(task_runner=DaskTaskRunner(cluster_kwargs={"n_workers": 1, "processes": False}))
    def on_dask() -> None:
        seen["parts"] = parts_for_runner()

    on_dask()
    assert seen["parts"] == MAX_PARTS
