"""A trained LSTM together with everything needed to use it: encoding, window,
bounds, and the interval scale and calibration that make its forecast a
distribution (models/intervals.py).

Two kinds of network head (models/distribution.py):

- a point head (`distribution="none"`, spec versions 1-2): the network
  predicts the encoded next close; the intervals are the HAR scale σ̂ around
  it, calibrated;
- a distributional head (spec version 3): the network predicts a location μ
  and a multiplier m of z = r / σ̂. The point forecast is the median,
  last close · exp(μ·σ̂); the intervals are calibrated quantiles of σ·z
  around it, with σ = σ̂·m when the run chose the `lstm` head and σ = σ̂
  when it chose `har` (models/heads.py: the one that scored better on
  validation).

Saved as two files that need no pickle: the weights as a torch `state_dict`
(loaded with ``weights_only=True``) and the spec as JSON.
"""

import json
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from closecast.core.config import PRICE_FEATURES
from closecast.core.statuses import INSUFFICIENT_HISTORY, INVALID_DATA, OK, Issues, Status
from closecast.models.calibration import INTERVAL_COLUMNS, LEVELS, bound_columns, close_intervals
from closecast.models.derived import extra_rows, source_columns, with_derived
from closecast.models.distribution import parameters
from closecast.models.encoding import Bounds, Encoding
from closecast.models.intervals import SCALE_COLUMNS, Intervals, RawWindows
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import SIGMA_FLOOR

# 3: a distributional head and the head the run chose; 2: intervals (scale + calibration)
# and the window's columns; 1: point only. All three load and predict.
SPEC_VERSION = 3
READABLE_SPECS = (1, 2, 3)
# The heads a distributional network's intervals can use (models/heads.py).
HEADS = ("lstm", "har")
# What `predict_frame` (and so the pyfunc) returns, column -> MLflow type.
OUTPUT_COLUMNS = {
    "ticker": "string",
    "predicted_close": "double",
    **dict.fromkeys(INTERVAL_COLUMNS, "double"),
    "status": "string",
    "message": "string",
}
FORECAST_COLUMNS = ("predicted_close", *INTERVAL_COLUMNS)
# Windows encoded at a time (each window is encoded on its own, so any chunk gives the same).
ENCODE_CHUNK = 65_536
# Windows predicted at a time: the raw windows of a chunk (float64) and their work arrays stay
# a few hundred MB however many windows are asked for (tasks' lazy windows read them on demand).
PREDICT_CHUNK = 262_144


def prediction_table(forecasts: dict[str, dict[str, float]], issues: Issues) -> pd.DataFrame:
    """The prediction output: one row per ticker, sorted, with its status.

    Built here only, so that every path (pyfunc, in memory) returns the same
    columns. A ticker with an issue, or whose forecast is not finite or not
    ordered lower_95 ≤ lower_80 ≤ predicted_close ≤ upper_80 ≤ upper_95, gets
    no numbers and a one-line message; an ok row always has finite numbers
    (interval columns are NaN only for a model that has no intervals).

    Args:
        forecasts: ticker -> {column of FORECAST_COLUMNS: value}, for the
            tickers the model predicted.
        issues: ticker -> (status, message), for the tickers it could not predict.
    """
    tickers = sorted({*forecasts, *issues})
    rows = []
    for ticker in tickers:
        values = {c: forecasts.get(ticker, {}).get(c, float("nan")) for c in FORECAST_COLUMNS}
        status, message = issues.get(ticker, (OK, ""))
        if status == OK:
            status, message = _check_forecast(values)
        if status != OK:
            values = dict.fromkeys(FORECAST_COLUMNS, float("nan"))
        rows.append({"ticker": ticker, **values, "status": status, "message": message})
    table = pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))
    return table.astype({c: "float64" for c in FORECAST_COLUMNS} | {"ticker": str})


def _check_forecast(values: dict[str, float]) -> tuple[Status, str]:
    """(ok, "") for a finite, positive, ordered forecast; else invalid_data and why."""
    point = values["predicted_close"]
    if not (np.isfinite(point) and point > 0):
        return INVALID_DATA, f"the model returned a non-finite prediction ({point})"
    bounds = [values[c] for c in INTERVAL_COLUMNS]
    if all(np.isnan(b) for b in bounds):
        return OK, ""  # a model without intervals (spec version 1)
    lowers = [values[bound_columns(level)[0]] for level in reversed(LEVELS)]  # widest first
    uppers = [values[bound_columns(level)[1]] for level in LEVELS]
    order = [*lowers, point, *uppers]
    if not (all(np.isfinite(order)) and all(a <= b for a, b in pairwise(order))):
        return INVALID_DATA, "the model returned intervals that are not finite or cross"
    return OK, ""


@dataclass
class Forecaster:
    """The network plus the representation it was trained on."""

    module: LSTMForecaster
    encoding: Encoding
    window: int
    bounds: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    intervals: Intervals | None = None  # None: point forecasts only (a spec-1 model)
    head: str | None = None  # a distributional network's chosen head, one of HEADS
    # Each head's validation interval score (models/heads.py), the reason for `head`.
    head_scores: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.distributional and self.intervals is None:
            raise ValueError(
                "a distributional network needs the HAR scale its head multiplies: "
                "give it intervals (models/intervals.py fit_base_scale)"
            )

    @property
    def head_label(self) -> str:
        """The `head` tag of its run and version: lstm or har, `point` for a one-output network."""
        return self.head or "point"

    @property
    def distributional(self) -> bool:
        """Whether the network predicts a distribution around the HAR scale (spec 3)."""
        return self.module.outputs > 1

    @property
    def features(self) -> tuple[str, ...]:
        return self.encoding.features

    @property
    def columns(self) -> tuple[str, ...]:
        """Each raw window's columns: the features, then the scale's (with intervals)."""
        if self.intervals is None:
            return self.features
        return (*self.features, *[c for c in SCALE_COLUMNS if c not in self.features])

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The window's columns as rows carry them: a derived feature's sources in its place."""
        return source_columns(self.columns)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns `predict_frame` reads: ticker, date and the window's raw columns."""
        return ("ticker", "date", *self.raw_columns)

    @property
    def input_rows(self) -> int:
        """Rows a ticker needs: the window, and those its derived features read before it."""
        return self.window + extra_rows(self.features)

    def window_values(self, rows: pd.DataFrame) -> np.ndarray:
        """The last window of one ticker's raw rows (sorted by date), (n, ·) -> (T, C)."""
        rows = with_derived(rows.iloc[-self.input_rows :], self.features)
        return rows[list(self.columns)].to_numpy(np.float64)[-self.window :]

    def window_bounds(self, tickers: np.ndarray) -> Bounds | None:
        """Stack each window's ticker bounds, (N,) -> Bounds of (N, F); None if not needed."""
        if not self.encoding.needs_bounds:
            return None
        unknown = sorted(set(tickers.tolist()) - set(self.bounds))
        if unknown:
            raise ValueError(f"no MinMax bounds for ticker(s) {', '.join(unknown)}")
        lo = np.array([self.bounds[t][0] for t in tickers], dtype=np.float64)
        hi = np.array([self.bounds[t][1] for t in tickers], dtype=np.float64)
        return Bounds(lo=lo, hi=hi)

    def predict_encoded(self, inputs: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Run the network on encoded inputs, (N, T, F) -> (N,) or (N, K), on the CPU in
        eval mode."""
        self.module.eval()
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                batch = torch.from_numpy(inputs[start : start + batch_size])  # (b, T, F)
                outputs.append(self.module(batch).numpy())  # (b,) or (b, K)
        if not outputs:
            shape = (0, self.module.outputs) if self.distributional else (0,)
            return np.empty(shape, dtype=np.float32)
        return np.concatenate(outputs)

    def predict_outputs(
        self, windows: np.ndarray, tickers: np.ndarray, chunk: int = ENCODE_CHUNK
    ) -> np.ndarray:
        """The network's outputs for raw windows (N, T, C) of tickers (N,): (N,) or (N, K).

        `chunk` windows at a time: encoding works in float64 on every window
        at once, a few hundred MB for a universe's training windows.
        """
        parts = []
        for start in range(0, len(windows), chunk):
            rows = slice(start, start + chunk)
            features = windows[rows, :, : len(self.features)]  # (n, T, C) -> (n, T, F)
            bounds = self.window_bounds(tickers[rows])
            parts.append(self.predict_encoded(self.encoding.inputs(features, bounds)))
        if not parts:
            return self.predict_encoded(np.empty((0, self.window, len(self.features)), np.float32))
        return np.concatenate(parts)

    def _distribution_parts(
        self, windows: np.ndarray, tickers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A distributional network's centre μ·σ̂ (log return), HAR scale σ̂ and
        multiplier m for raw windows (N, T, C) of tickers (N,): three (N,) arrays."""
        if not self.distributional or self.intervals is None:
            raise ValueError("only a distributional network with a HAR scale has these parts")
        found = parameters(self.module.config.distribution, self.predict_outputs(windows, tickers))
        sigma_hat = self.intervals.base_scale(windows, self.columns)  # (N,)
        return found.location * sigma_hat, sigma_hat, found.multiplier

    def encode_targets(
        self, windows: np.ndarray, next_close: np.ndarray, bounds: Bounds | None
    ) -> np.ndarray:
        """What the network learns for raw windows (N, T, C): the encoded next close of a
        point head; z = r / σ̂, the next log return in HAR-scale units, of a
        distributional one. (N,) float32."""
        if not self.distributional:
            return self.encoding.targets(next_close, windows[:, :, : len(self.features)], bounds)
        if self.intervals is None:
            raise ValueError("a distributional network's targets need the HAR scale")
        last_close = windows[:, -1, self.columns.index("close")]  # (N, T, C) -> (N,)
        z = np.log(next_close / last_close) / self.intervals.base_scale(windows, self.columns)
        return z.astype(np.float32)

    def _predict_windows(self, windows: np.ndarray, tickers: np.ndarray) -> np.ndarray:
        """Predict the next close of raw windows (N, T, C) of tickers (N,) -> closes (N,):
        a point head's decoded output, a distributional head's median."""
        last_close = windows[:, -1, self.columns.index("close")]  # (N, T, C) -> (N,)
        if self.distributional:
            centre, _, _ = self.distribution_parts(windows, tickers)
            return last_close * np.exp(centre)
        features = windows[:, :, : len(self.features)]  # (N, T, C) -> (N, T, F)
        bounds = self.window_bounds(tickers)
        return self.encoding.decode(self.predict_outputs(windows, tickers), features, bounds)

    def distribution_parts(
        self, windows: RawWindows, tickers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A distributional network's centre μ·σ̂ (log return), HAR scale σ̂ and
        multiplier m for raw windows (N, T, C) of tickers (N,): three (N,) arrays."""
        return _by_chunk(self._distribution_parts, windows, tickers)

    def predict_windows(self, windows: RawWindows, tickers: np.ndarray) -> np.ndarray:
        """Predict the next close of raw windows (N, T, C) of tickers (N,) -> closes (N,):
        a point head's decoded output, a distributional head's median."""
        return _by_chunk(self._predict_windows, windows, tickers)

    def predict_distribution(
        self, windows: RawWindows, tickers: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The point forecast and its intervals for raw windows (N, T, C) of tickers (N,),
        PREDICT_CHUNK windows at a time.

        Returns:
            {column of FORECAST_COLUMNS: closes (N,)}; interval columns are NaN for a
            model without intervals.
        """
        return _by_chunk(self._predict_distribution, windows, tickers)

    def _predict_distribution(
        self, windows: np.ndarray, tickers: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The point forecast and its intervals for raw windows (N, T, C) of tickers (N,).

        Returns:
            {column of FORECAST_COLUMNS: closes (N,)}; interval columns are NaN for a
            model without intervals.
        """
        if self.distributional and self.intervals is not None:
            last_close = windows[:, -1, self.columns.index("close")]  # (N, T, C) -> (N,)
            centre, sigma_hat, multiplier = self.distribution_parts(windows, tickers)
            sigma = head_sigma(self.head, sigma_hat, multiplier)
            bounds = close_intervals(last_close, centre, sigma, self.intervals.calibration)
            point = last_close * np.exp(centre)
            return {"predicted_close": point, **{c: bounds[c] for c in INTERVAL_COLUMNS}}
        point = self.predict_windows(windows, tickers)  # (N,)
        if self.intervals is None:
            nan = np.full(len(point), np.nan)
            return {"predicted_close": point, **{c: nan.copy() for c in INTERVAL_COLUMNS}}
        bounds = self.intervals.around(point, windows, self.columns)
        return {"predicted_close": point, **{c: bounds[c] for c in INTERVAL_COLUMNS}}

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Predict the close after the last row of each ticker.

        A ticker that cannot be predicted (too few rows, a missing or bad
        value in its last window) gets a status and a message; the others are
        predicted all the same.

        Args:
            frame: rows with columns ticker, date (datetimes) and the feature
                columns (numbers), in any order.

        Returns:
            One row per ticker, sorted, with the columns of `prediction_table`.

        Raises:
            ValueError: when a column is missing, naming it.
        """
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {', '.join(missing)}")
        tickers, windows, issues = [], [], {}
        ordered = frame.sort_values(["ticker", "date"], kind="stable")
        for key, rows in ordered.groupby("ticker", sort=True):
            ticker = str(key)
            issue = self.window_issue(ticker, rows)
            if issue is not None:
                issues[ticker] = issue
                continue
            tickers.append(ticker)
            windows.append(self.window_values(rows))  # (T, C)
        if not windows:
            return prediction_table({}, issues)
        stacked = np.stack(windows)  # T×C per ticker -> (N, T, C)
        forecast = self.predict_distribution(stacked, np.array(tickers))
        rows_out = {t: {c: float(v[i]) for c, v in forecast.items()} for i, t in enumerate(tickers)}
        return prediction_table(rows_out, issues)

    def window_issue(self, ticker: str, rows: pd.DataFrame) -> tuple[Status, str] | None:
        """Why one ticker's rows (sorted by date) cannot be predicted, or None.

        Prices must be finite and > 0 and other features finite and >= 0 (the
        encoding takes their logs), over the last `input_rows` rows only: the
        window, and the rows before it that derived features read.
        """
        if self.encoding.needs_bounds and ticker not in self.bounds:
            reason = "no MinMax bounds for this ticker: the model was not trained on it"
            return INSUFFICIENT_HISTORY, reason
        needed = self.input_rows
        if len(rows) < needed:
            why = f"the model's window needs {self.window}"
            if needed > self.window:
                why += f" and its features {needed - self.window} rows before it"
            return INSUFFICIENT_HISTORY, f"{len(rows)} rows; {why}"
        last = rows.iloc[-needed:]
        dates = last["date"]
        if dates.isna().any():
            return INVALID_DATA, f"a date in the last {needed} rows is missing or not a date"
        repeated = dates[dates.duplicated()]
        if len(repeated):
            day = repeated.iloc[0].date().isoformat()
            return INVALID_DATA, f"date {day} appears more than once"
        for name in self.raw_columns:
            values = last[name].to_numpy(np.float64)  # (T,)
            valid = values > 0 if name in PRICE_FEATURES else values >= 0
            bad = ~(np.isfinite(values) & valid)
            if bad.any():
                at = int(np.argmax(bad))
                day = dates.iloc[at].date().isoformat()
                return INVALID_DATA, f"{name} is {values[at]:g} on {day}"
        if self.intervals is not None:
            inverted = (last["high"] < last["low"]).to_numpy()
            if inverted.any():
                day = dates.iloc[int(np.argmax(inverted))].date().isoformat()
                return INVALID_DATA, f"high is below low on {day}"
        return None

    def spec(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready data."""
        return {
            "spec_version": SPEC_VERSION,
            "lstm": asdict(self.module.config),
            "n_features": self.module.n_features,
            "features": list(self.features),
            "target": self.encoding.target,
            "window": self.window,
            "bounds": {t: [lo, hi] for t, (lo, hi) in self.bounds.items()},
            "intervals": self.intervals.to_dict() if self.intervals else None,
            "head": self.head,
            "head_scores": self.head_scores,
        }

    def save(self, directory: Path) -> tuple[Path, Path]:
        """Write `weights.pt` (state_dict) and `spec.json` into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        weights, spec = directory / "weights.pt", directory / "spec.json"
        state = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        torch.save(state, weights)
        spec.write_text(json.dumps(self.spec(), indent=2))
        return weights, spec

    @classmethod
    def load(cls, weights: Path, spec: Path) -> "Forecaster":
        """Rebuild from the two files `save` wrote, without unpickling anything."""
        data = json.loads(Path(spec).read_text())
        if data.get("spec_version") not in READABLE_SPECS:
            raise ValueError(f"unsupported model spec version {data.get('spec_version')!r}")
        # Versions 1-2 predate distributional heads: their one output is a point.
        lstm = LSTMConfig(**{"distribution": "none", **data["lstm"]})
        module = LSTMForecaster(lstm, n_features=data["n_features"])
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        module.eval()
        return cls(
            module=module,
            encoding=Encoding(features=tuple(data["features"]), target=data["target"]),
            window=int(data["window"]),
            bounds={t: (b[0], b[1]) for t, b in data["bounds"].items()},
            intervals=Intervals.from_dict(data["intervals"]) if data.get("intervals") else None,
            head=data.get("head"),
            head_scores={k: float(v) for k, v in (data.get("head_scores") or {}).items()},
        )


def _by_chunk(method: Any, windows: RawWindows, tickers: np.ndarray) -> Any:
    """`method(windows, tickers)` PREDICT_CHUNK windows at a time, its (N,) arrays (alone,
    in a tuple or in a dict) joined: each window's forecast is its own, so chunks change
    nothing but the memory used."""
    if len(windows) <= PREDICT_CHUNK:
        return method(np.asarray(windows), tickers)
    parts = [
        method(windows[start : start + PREDICT_CHUNK], tickers[start : start + PREDICT_CHUNK])
        for start in range(0, len(windows), PREDICT_CHUNK)
    ]
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    if isinstance(parts[0], tuple):
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))
    return np.concatenate(parts)


def head_sigma(head: str | None, sigma_hat: np.ndarray, multiplier: np.ndarray) -> np.ndarray:
    """The scale a head's intervals use: σ̂·m for `lstm`, σ̂ for `har`, at least SIGMA_FLOOR."""
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    sigma = sigma_hat * multiplier if head == "lstm" else sigma_hat
    return np.maximum(sigma, SIGMA_FLOOR)
