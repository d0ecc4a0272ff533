import numpy as np
import pandas as pd
from mlflow.data.digest_utils import compute_pandas_digest

from tasks.tracking import prices_table, table_digest


def test_prices_table_is_long_and_its_digest_covers_every_row() -> None:
    """The training data is one long table; changing any row, even past 10,000, changes its digest."""
    index = pd.date_range("2000-01-03", periods=6000, freq="D", name="date")
    frames = {
        t: pd.DataFrame({"close": np.linspace(1, 2, 6000), "volume": 1.0}, index=index)
        for t in ("BBB", "AAA")
    }
    table = prices_table(frames)
    assert list(table.columns) == ["ticker", "date", "close", "volume"]
    assert len(table) == 12_000 and table["ticker"].iloc[0] == "AAA"
    changed = table.copy()
    changed.loc[11_999, "close"] += 0.01
    assert table_digest(table) == table_digest(table.copy())
    assert table_digest(changed) != table_digest(table)
    assert len(table_digest(table)) <= 36
    # MLflow's default digest looks at the first 10,000 rows only: why closecast computes its own
    assert compute_pandas_digest(changed) == compute_pandas_digest(table)
