"""The MLflow pyfunc wrapper: raw OHLCV rows in, next closes out.

Logged as models-from-code (`models/mlflow_model.py`), with the weights and
spec as artifacts, so loading it unpickles nothing.

Input is taken as people have it: `read_csv` output (int64 volume, dates as
strings), yfinance bars (capitalised names, a `Date` index, no ticker column). MLflow's
schema check only lets the accepted column names through (see `accepted_names`);
`read_input` turns them into the canonical frame `Forecaster.predict_frame` reads.
"""

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel, PythonModelContext

from closecast.models.forecaster import Forecaster

# Other names a column goes by: the ticker column of long-format price files.
ALIASES = {"ticker": ("ticker", "symbol", "name")}
UNNAMED_TICKER = ""  # the ticker of input that names none: all its rows are one ticker


def accepted_names(column: str) -> tuple[str, ...]:
    """The names `column` may have in the input, most preferred first: `close`, `Close`."""
    names = ALIASES.get(column, (column,))
    return tuple(n for name in names for n in (name, name.capitalize()))


def _find(frame: pd.DataFrame, column: str) -> str | None:
    return next((n for n in accepted_names(column) if n in frame.columns), None)


def _refuse_unusable(column: str, given: pd.Series, read: pd.Series, kind: str) -> None:
    """One line when values are given but none could be read: the column is not what it says.

    A column that is merely empty (all NaN) is left to the per-ticker checks.
    """
    present = given.dropna()
    if len(present) and read.isna().all():
        first = repr(present.iloc[0])
        first = first if len(first) <= 40 else f"{first[:37]}..."
        raise ValueError(f"column {column} holds no {kind} (first value {first})")


def _read_dates(values: pd.Series) -> pd.Series:
    """Naive datetimes (the wall-clock date as given) from datetimes or strings; NaT if not."""
    if not pd.api.types.is_datetime64_any_dtype(values):
        try:
            values = pd.to_datetime(values, errors="coerce")
        except (TypeError, ValueError):  # mixed UTC offsets: only the order matters here
            values = pd.to_datetime(values, errors="coerce", utc=True)
    if values.dt.tz is not None:
        values = values.dt.tz_localize(None)
    return values


def read_input(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """The canonical frame: `columns` named in lower case, dates as datetimes, numbers as floats.

    A column may come under any of its `accepted_names`; the date may be the
    index (yfinance's `Date`); with no ticker column every row is one ticker,
    named UNNAMED_TICKER. A value that is not a number or a date becomes
    NaN/NaT, which makes its ticker `invalid_data` rather than failing the rest.

    Raises:
        ValueError: one line naming a missing column, or a column with no usable value.
    """
    out = {}
    for column in columns:
        name = _find(frame, column)
        if name is not None:
            values = frame[name]
        elif column == "date" and isinstance(frame.index, pd.DatetimeIndex):
            values = frame.index.to_series()
        elif column == "ticker":  # one ticker's bars, e.g. yfinance's, name none: one ticker
            values = pd.Series(UNNAMED_TICKER, index=frame.index)
        else:
            accepted = ", ".join(accepted_names(column))
            raise ValueError(f"input has no {column} column (accepted names: {accepted})")
        values = values.reset_index(drop=True)
        if column == "ticker":
            out[column] = values.astype(str).where(values.notna())
        elif column == "date":
            out[column] = _read_dates(values)
            _refuse_unusable(name or "date (the index)", values, out[column], "dates")
        else:
            out[column] = pd.to_numeric(values, errors="coerce").astype("float64")
            _refuse_unusable(name or column, values, out[column], "numbers")
    return pd.DataFrame(out)


class CloseForecastModel(PythonModel):
    """`predict(df)`: ticker, date and the model's features -> one row per ticker with a status."""

    forecaster: Forecaster

    def load_context(self, context: PythonModelContext) -> None:
        self.forecaster = Forecaster.load(
            Path(context.artifacts["weights"]), Path(context.artifacts["spec"])
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        try:
            frame = read_input(pd.DataFrame(model_input), self.forecaster.input_columns)
        except ValueError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        return self.forecaster.predict_frame(frame)
