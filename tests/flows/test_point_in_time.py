from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from closecast.flows.fetch import fetch
from closecast.flows.nightly import nightly
from closecast.tasks.data.store import read_prices
from tests.fakes import yahoo_frame
from tests.fixtures import read_report, tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

AS_OF = date(2020, 6, 13)  # a Saturday: the run is for Friday 2020-06-12


def _write_csvs(folder: Path, histories: dict[str, pd.DataFrame], last: date | None) -> Path:
    folder.mkdir(parents=True)
    for ticker, history in histories.items():
        rows = history if last is None else history[history.index <= pd.Timestamp(last)]
        rows.to_csv(folder / f"{ticker}.csv")
    return folder


def test_report_for_d_ignores_data_after_d(tmp_path: Path) -> None:
    """Same seed, as_of D: one source ends at D, the other (and its store) runs 40 sessions
    past D; the reports and the trained-on data hash are identical."""
    histories = {}
    for i, ticker in enumerate(["AAA", "BBB"]):
        history = yahoo_frame(150, seed=i, base=50.0 + 40 * i)
        history.index = history.index.tz_localize(None).rename("Date")
        histories[ticker] = history
    cut = _write_csvs(tmp_path / "cut", histories, AS_OF)
    full = _write_csvs(tmp_path / "full", histories, None)
    tickers = ["AAA", "BBB"]

    only_d = tiny_config(tmp_path / "only_d", f"csv:{cut}", tickers, as_of=AS_OF)
    later = tiny_config(tmp_path / "later", f"csv:{full}", tickers, as_of=AS_OF)
    fetch(later.data.model_copy(update={"as_of": None}), later.home)  # store runs past D
    assert read_prices(later.prices_dir, "AAA").index[-1] > pd.Timestamp(AS_OF)

    first, second = nightly(only_d), nightly(later)

    reports = [read_report(r.report_path).drop(columns=["run_id"]) for r in (first, second)]
    pd.testing.assert_frame_equal(reports[0], reports[1])
    assert first.report_path.name == second.report_path.name == "predictions_2020-06-12.csv"
    assert set(reports[0]["target_date"]) == {"2020-06-15"}
    assert list(reports[0]["status"]) == ["ok", "ok"]
    closes = [histories[t].loc["2020-06-12", "Close"] for t in tickers]
    assert list(reports[0]["last_close"]) == pytest.approx(closes)
    hashes = [
        MlflowClient(c.mlflow_uri).get_run(r.run_id).data.tags["data_sha256"]
        for c, r in ((only_d, first), (later, second))
    ]
    assert hashes[0] == hashes[1]
