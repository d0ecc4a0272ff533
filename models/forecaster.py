"""A trained LSTM together with everything needed to use it: encoding, window, bounds.

Saved as two files that need no pickle: the weights as a torch `state_dict`
(loaded with ``weights_only=True``) and the spec as JSON.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.encoding import PRICE_FEATURES, Bounds, Encoding
from models.lstm import LSTMConfig, LSTMForecaster

SPEC_VERSION = 1

# The report's statuses (closecast.statuses): models/ travels inside the logged
# model as code, so it imports nothing from closecast and repeats the strings.
OK, INSUFFICIENT_HISTORY, INVALID_DATA = "ok", "insufficient_history", "invalid_data"
# ticker -> (status, one-line reason) for the tickers that get no prediction.
Issues = dict[str, tuple[str, str]]
# What `predict_frame` (and so the pyfunc) returns, column -> MLflow type.
OUTPUT_COLUMNS = {
    "ticker": "string",
    "predicted_close": "double",
    "status": "string",
    "message": "string",
}


def prediction_table(closes: dict[str, float], issues: Issues) -> pd.DataFrame:
    """The prediction output: one row per ticker, sorted, with its status.

    Built here only, so that every path (pyfunc, in memory) returns the same
    columns. A ticker with an issue, or whose prediction is not finite, gets
    no number and a one-line message; an ok row always has a finite number.

    Args:
        closes: ticker -> predicted close, for the tickers the model predicted.
        issues: ticker -> (status, message), for the tickers it could not predict.
    """
    tickers = sorted({*closes, *issues})
    predicted, statuses, messages = [], [], []
    for ticker in tickers:
        close = closes.get(ticker, float("nan"))
        status, message = issues.get(ticker, (OK, ""))
        if status == OK and not np.isfinite(close):
            status, message = INVALID_DATA, f"the model returned a non-finite prediction ({close})"
        predicted.append(close if status == OK else float("nan"))
        statuses.append(status)
        messages.append(message)
    table = pd.DataFrame(
        {
            "ticker": pd.Series(tickers, dtype=str),
            "predicted_close": pd.Series(predicted, dtype=np.float64),
            "status": pd.Series(statuses, dtype=str),
            "message": pd.Series(messages, dtype=str),
        }
    )
    return table[list(OUTPUT_COLUMNS)]


@dataclass
class Forecaster:
    """The network plus the representation it was trained on."""

    module: LSTMForecaster
    encoding: Encoding
    window: int
    bounds: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    @property
    def features(self) -> tuple[str, ...]:
        return self.encoding.features

    @property
    def input_columns(self) -> tuple[str, ...]:
        """The columns `predict_frame` reads: ticker, date and the features."""
        return ("ticker", "date", *self.features)

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
        """Run the network on encoded inputs, (N, T, F) -> (N,), on the CPU in eval mode."""
        self.module.eval()
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                batch = torch.from_numpy(inputs[start : start + batch_size])  # (b, T, F)
                outputs.append(self.module(batch).numpy())  # (b,)
        return np.concatenate(outputs) if outputs else np.empty(0, dtype=np.float32)

    def predict_windows(self, windows: np.ndarray, tickers: np.ndarray) -> np.ndarray:
        """Predict the next close of raw windows (N, T, F) of tickers (N,) -> closes (N,)."""
        bounds = self.window_bounds(tickers)
        encoded = self.predict_encoded(self.encoding.inputs(windows, bounds))
        return self.encoding.decode(encoded, windows, bounds)

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
            values = rows[list(self.features)].to_numpy(np.float64)  # (n, F)
            windows.append(values[-self.window :])  # (n, F) -> (T, F)
        if not windows:
            return prediction_table({}, issues)
        stacked = np.stack(windows)  # T×F per ticker -> (N, T, F)
        closes = self.predict_windows(stacked, np.array(tickers))
        return prediction_table(dict(zip(tickers, closes.tolist(), strict=True)), issues)

    def window_issue(self, ticker: str, rows: pd.DataFrame) -> tuple[str, str] | None:
        """Why one ticker's rows (sorted by date) cannot be predicted, or None.

        Prices must be finite and > 0 and other features finite and >= 0 (the
        encoding takes their logs), over the last `window` rows only.
        """
        if self.encoding.needs_bounds and ticker not in self.bounds:
            reason = "no MinMax bounds for this ticker: the model was not trained on it"
            return INSUFFICIENT_HISTORY, reason
        if len(rows) < self.window:
            return INSUFFICIENT_HISTORY, f"{len(rows)} rows; the model's window needs {self.window}"
        last = rows.iloc[-self.window :]
        dates = last["date"]
        if dates.isna().any():
            return INVALID_DATA, f"a date in the last {self.window} rows is missing or not a date"
        repeated = dates[dates.duplicated()]
        if len(repeated):
            day = repeated.iloc[0].date().isoformat()
            return INVALID_DATA, f"date {day} appears more than once"
        for name in self.features:
            values = last[name].to_numpy(np.float64)  # (T,)
            valid = values > 0 if name in PRICE_FEATURES else values >= 0
            bad = ~(np.isfinite(values) & valid)
            if bad.any():
                at = int(np.argmax(bad))
                day = dates.iloc[at].date().isoformat()
                return INVALID_DATA, f"{name} is {values[at]:g} on {day}"
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
        if data.get("spec_version") != SPEC_VERSION:
            raise ValueError(f"unsupported model spec version {data.get('spec_version')!r}")
        module = LSTMForecaster(LSTMConfig(**data["lstm"]), n_features=data["n_features"])
        module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        module.eval()
        return cls(
            module=module,
            encoding=Encoding(features=tuple(data["features"]), target=data["target"]),
            window=int(data["window"]),
            bounds={t: (b[0], b[1]) for t, b in data["bounds"].items()},
        )
