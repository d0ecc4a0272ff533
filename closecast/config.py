"""The one validated configuration object, passed down to every step.

`PipelineConfig` is the parameter of every flow, so Prefect validates it and
draws a form for it in its UI. Each task receives only the sub-config it needs.
"""

import os
import re
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from models.lstm import LSTMConfig

TICKER_PATTERN = re.compile(r"^[A-Za-z0-9.^=_-]{1,20}$")
SAMPLE_TICKERS = ("^GSPC", "^IXIC")
FeatureName = Literal["close", "volume", "open", "high", "low"]
DEFAULT_FEATURES: tuple[FeatureName, ...] = ("close", "volume", "open")
EXPERIMENT = "closecast"
BACKFILL_EXPERIMENT = "closecast-backfill"
MODEL_NAME = "closecast-lstm"


def check_ticker(ticker: str) -> str:
    """Validate one ticker symbol and return it upper-cased (as Yahoo keys it)."""
    ticker = ticker.strip()
    if not TICKER_PATTERN.fullmatch(ticker) or ticker in {".", ".."}:
        raise ValueError(f"invalid ticker {ticker!r}: expected 1-20 of A-Z a-z 0-9 . ^ = _ -")
    return ticker.upper()


Ticker = Annotated[str, AfterValidator(check_ticker)]


def check_source(source: str) -> str:
    """Validate a source spec: `yfinance`, `sample` or `csv:PATH`."""
    if source in {"yfinance", "sample"}:
        return source
    if source.startswith("csv:") and len(source) > len("csv:"):
        return source
    raise ValueError(f"invalid source {source!r}: expected yfinance, sample or csv:PATH")


def default_home() -> Path:
    """`$CLOSECAST_HOME`, else `.closecast` under the current directory."""
    return Path(os.environ.get("CLOSECAST_HOME") or ".closecast").absolute()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where prices come from and which dates a run may see."""

    source: Annotated[str, AfterValidator(check_source)] = "yfinance"
    tickers: list[Ticker] = Field(default_factory=list)
    as_of: date | None = None
    start: date | None = Field(
        default=None, description="First date fetched for a ticker new to the store."
    )
    history_years: int = Field(
        default=10, ge=1, le=100, description="Years fetched for a new ticker when start is unset."
    )
    overlap_days: int = Field(
        default=5, ge=1, le=60, description="Stored rows re-checked against the source each fetch."
    )
    chunk_size: int = Field(default=100, ge=1, le=1000, description="Tickers per yfinance batch.")
    fetch_retries: int = Field(
        default=3,
        ge=0,
        le=10,
        description="Retries of a chunk after a rate limit or network error.",
    )
    retry_backoff_seconds: float = Field(
        default=2.0, ge=0, le=600, description="First retry delay; each later one is 4x longer."
    )

    @field_validator("tickers")
    @classmethod
    def _unique(cls, tickers: list[str]) -> list[str]:
        return list(dict.fromkeys(tickers))


class WindowConfig(_Strict):
    """Features, window length, target representation and the time split."""

    window: int = Field(default=10, ge=2, le=250)
    features: list[FeatureName] = Field(default_factory=lambda: list(DEFAULT_FEATURES))
    target: Literal["vol_return", "log_return", "minmax_close"] = Field(
        default="vol_return",
        description="vol_return: next-day log return in units of the window's own volatility; "
        "log_return: next-day log return, inputs normalised inside each window; "
        "minmax_close: the reference design's MinMax-scaled close, fitted per ticker on train.",
    )
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.1, gt=0, lt=0.5)

    @field_validator("features")
    @classmethod
    def _close_first(cls, features: list[str]) -> list[str]:
        if "close" not in features:
            raise ValueError("features must include 'close'")
        if len(set(features)) != len(features):
            raise ValueError(f"features repeat a name: {features}")
        return features


class TrainConfig(_Strict):
    """Optimisation settings: Adam on MSE with early stopping."""

    epochs: int = Field(default=50, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    learning_rate: float = Field(default=1e-3, gt=0, le=1)
    patience: int = Field(default=5, ge=1, description="Epochs without a better val loss.")
    grad_clip: float = Field(default=1.0, gt=0)
    seed: int = 42
    device: Literal["auto", "cpu", "cuda"] = "auto"
    shrink_output: bool = Field(
        default=True,
        description="Return targets: scale predicted returns by the factor in [0, 1] that the "
        "validation windows support beyond chance (0 = the naive forecast); "
        "see benchmarks/README.md.",
    )


class PipelineConfig(_Strict):
    """Everything one pipeline run needs."""

    home: Path = Field(default_factory=default_home)
    data: DataConfig = Field(default_factory=DataConfig)
    windows: WindowConfig = Field(default_factory=WindowConfig)
    lstm: LSTMConfig = Field(default_factory=LSTMConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    promotion: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: the gate may move `champion`; manual: people promote by hand.",
    )
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///<home>/mlflow.db."
    )
    experiment: str = EXPERIMENT

    @model_validator(mode="after")
    def _sample_defaults(self) -> "PipelineConfig":
        if not self.data.tickers and self.data.source == "sample":
            data = self.data.model_copy(update={"tickers": list(SAMPLE_TICKERS)})
            object.__setattr__(self, "data", data)
        return self

    @property
    def mlflow_uri(self) -> str:
        """The tracking URI this run logs to."""
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def prices_dir(self) -> Path:
        return self.home / "prices"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"
