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

from models.encoding import Bounds, Encoding
from models.lstm import LSTMConfig, LSTMForecaster

SPEC_VERSION = 1
INPUT_COLUMNS = ("ticker", "date", "open", "high", "low", "close", "volume")


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

        Args:
            frame: rows with columns ticker, date and the feature columns, at
                least `window` rows per ticker.

        Returns:
            One row per ticker (sorted): ticker, predicted_close.
        """
        missing = [c for c in ("ticker", "date", *self.features) if c not in frame.columns]
        if missing:
            raise ValueError(f"input is missing column(s) {', '.join(missing)}")
        tickers, windows = [], []
        for ticker, rows in frame.sort_values(["ticker", "date"]).groupby("ticker", sort=True):
            values = rows[list(self.features)].to_numpy(dtype=np.float64)  # (n, F)
            if len(values) < self.window:
                raise ValueError(
                    f"ticker {ticker} has {len(values)} rows; the model needs {self.window}"
                )
            tickers.append(str(ticker))
            windows.append(values[-self.window :])  # (n, F) -> (T, F)
        if not windows:
            return pd.DataFrame({"ticker": [], "predicted_close": []})
        stacked = np.stack(windows)  # T×F per ticker -> (N, T, F)
        closes = self.predict_windows(stacked, np.array(tickers))
        return pd.DataFrame({"ticker": tickers, "predicted_close": closes})

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
