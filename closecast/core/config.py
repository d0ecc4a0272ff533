"""The one validated configuration object, passed down to every step.

`PipelineConfig` is the parameter of every flow, so Prefect validates it and
draws a form for it in its UI. Each task receives only the sub-config it needs.
"""

import os
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from closecast.core.errors import InputError
from closecast.core.sources import SOURCE_HELP, SOURCE_PATTERN, check_source

TICKER_PATTERN = re.compile(r"^[A-Za-z0-9.^=_-]{1,20}$")
SAMPLE_TICKERS = ("^GSPC", "^IXIC")
FeatureName = Literal["close", "volume", "open", "high", "low", "range22", "range66", "volume60"]
# The one list of feature names (a window's columns: adjusted prices and volume) and of
# target names (what the network predicts, models/encoding.py); the rest read these.
FEATURES: tuple[FeatureName, ...] = get_args(FeatureName)
# Prices: split- and dividend-adjusted, > 0.
PRICE_FEATURES: frozenset[FeatureName] = frozenset({"close", "open", "high", "low"})
# Opt-in scale features that reach further back than the window (models/derived.py): the
# rows, up to and including its own, that each row's value reads.
LOOKBACK: dict[FeatureName, int] = {"range22": 22, "range66": 66, "volume60": 60}
# The reference design's close, volume and open, then the scale inputs that let the
# distributional head see further back than its window (issue 20: benchmarks/README.md).
DEFAULT_FEATURES: tuple[FeatureName, ...] = (
    "close",
    "volume",
    "open",
    "high",
    "low",
    "range22",
    "range66",
    "volume60",
)
TargetName = Literal["vol_return", "log_return", "minmax_close"]
TARGETS: tuple[TargetName, ...] = get_args(TargetName)
DEFAULT_TARGET: TargetName = "vol_return"
# What the dense head predicts (models/distribution.py): the next log return's
# distribution around the HAR scale, or ("none", the reference design) one number by MSE.
DistributionName = Literal["student_t", "normal", "none"]
DISTRIBUTIONS: tuple[DistributionName, ...] = get_args(DistributionName)
DEFAULT_DISTRIBUTION: DistributionName = "normal"
EXPERIMENT = "closecast"
BACKFILL_EXPERIMENT = "closecast-backfill"
MODEL_NAME = "closecast-lstm"
CANDIDATES_ENV = "CLOSECAST_CANDIDATES_MODEL"  # set: the nightly registers there, for review
# The registry aliases: the version that serves, and the one trained last (the gate's
# "champion" decision is named after the alias it moves).
CHAMPION, CHALLENGER = "champion", "challenger"


ISO_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
# A date as the Prefect run form draws it: a text box for YYYY-MM-DD, not a calendar that
# opens on today; validated (and parsed) as a date all the same.
DateText = Annotated[
    date,
    WithJsonSchema({"type": "string", "pattern": ISO_DATE_PATTERN, "examples": ["2024-05-01"]}),
]
# The same, or empty; the form's toggle reads "YYYY-MM-DD | latest".
OptionalDateText = Annotated[
    date | None,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": ISO_DATE_PATTERN, "title": "YYYY-MM-DD"},
                {"type": "null", "title": "latest"},
            ],
            "examples": ["2024-05-01"],
        }
    ),
]


def check_ticker(ticker: str) -> str:
    """Validate one ticker symbol and return it upper-cased (as Yahoo keys it)."""
    ticker = ticker.strip()
    if not TICKER_PATTERN.fullmatch(ticker) or ticker in {".", ".."}:
        raise ValueError(f"invalid ticker {ticker!r}: expected 1-20 of A-Z a-z 0-9 . ^ = _ -")
    return ticker.upper()


Ticker = Annotated[str, AfterValidator(check_ticker)]


def check_home(home: Path) -> Path:
    """A home is a folder, or a path where one can be made: not a file, not under a file."""
    for path in (home, *home.parents):
        if path.exists():
            if not path.is_dir():
                what = "is" if path == home else f"is under {path}, which is"
                raise ValueError(f"home {str(home)!r} {what} a file, not a folder")
            break
    return home


def check_tracking_uri(uri: str | None) -> str | None:
    """A `sqlite:///PATH` URI whose database can live there (no file where a folder must be)."""
    if uri is not None and uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        for path in db.parents:
            if path.exists():
                if not path.is_dir():
                    raise ValueError(f"tracking URI {uri!r}: {path} is a file, not a folder")
                break
        if db.is_dir():
            raise ValueError(f"tracking URI {uri!r}: {db} is a folder, not a database file")
    return uri


_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_model_name(name: str | None) -> str | None:
    """A registered-model name for the candidates model: letters, digits, `.`, `_`, `-`, and
    not the production model's own name."""
    if name is None:
        return None
    if not _MODEL_NAME.match(name):
        raise InputError(
            f"invalid candidates model {name!r}: expected letters, digits, '.', '_' or '-' "
            "(at most 100), e.g. closecast-lstm-candidates"
        )
    if name == MODEL_NAME:
        raise InputError(
            f"invalid candidates model {name!r}: it must differ from {MODEL_NAME}, "
            "whose champion reviewers control"
        )
    return name


def default_home() -> Path:
    """`$CLOSECAST_HOME`, else `.closecast` under the current directory."""
    return Path(os.environ.get("CLOSECAST_HOME") or ".closecast").absolute()


@dataclass(frozen=True)
class LSTMConfig:
    """Architecture of the forecaster (the number of features comes from the data)."""

    # The Field annotations are for the config form and its validation (pydantic);
    # __post_init__ checks the same bounds when the class is built directly.
    hidden_size: Annotated[int, Field(ge=1, le=4096, description="LSTM hidden units, e.g. 32.")] = (
        32
    )
    num_layers: Annotated[int, Field(ge=1, le=8, description="Stacked LSTM layers, e.g. 1.")] = 1
    # Applied to the last hidden state, before the head. nn.LSTM's own
    # `dropout` acts only between stacked layers, so with one layer it would
    # silently do nothing.
    dropout: Annotated[
        float, Field(ge=0, lt=1, description="Dropout before the dense head, e.g. 0.2.")
    ] = 0.2
    # A distributional head needs a return target (the HAR scale is a return's scale).
    distribution: Annotated[
        DistributionName,
        Field(
            description="What the head predicts: student_t or normal (the next log return's "
            "distribution around the HAR scale, trained by likelihood) or none (one number, MSE)."
        ),
    ] = DEFAULT_DISTRIBUTION

    def __post_init__(self) -> None:
        if self.hidden_size < 1 or self.num_layers < 1:
            raise ValueError(f"hidden_size and num_layers must be >= 1, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.distribution!r}; expected one of {DISTRIBUTIONS}"
            )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Where prices come from and which dates a run may see."""

    source: Annotated[str, AfterValidator(check_source)] = Field(
        default="yfinance",
        pattern=SOURCE_PATTERN,
        description=f"Where prices come from: {SOURCE_HELP}, e.g. csv:/data/prices.",
    )
    tickers: list[Ticker] = Field(
        default_factory=list,
        description="Tickers to predict, e.g. AAPL, MSFT, ^GSPC; empty with source sample "
        "means ^GSPC and ^IXIC, with a csv source every ticker it holds.",
    )
    as_of: OptionalDateText = Field(
        default=None,
        description="Last date a run may see, e.g. 2024-05-01; empty = the latest session; "
        "a date that is not a session means the session before.",
    )
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
        default=2.0, ge=0, le=600, description="First retry delay; each later one is 2x longer."
    )
    # Yahoo publishes no limit. Users report HTTP 429 after bursts of about 1,500 tickers
    # (yfinance #2480) and no trouble at one request every 1-2 s (#312, #2325): one a second
    # stays at that pace, in bursts of one chunk. README.md: "Fetching a large universe".
    fetch_rate: float = Field(
        default=60.0,
        gt=0,
        le=100_000,
        description="Most tickers asked of a live source (yfinance) per minute, e.g. 60: a "
        "Prefect rate limit (closecast-fetch-yfinance) the fetch creates or updates; local "
        "sources are not limited.",
    )

    @field_validator("tickers")
    @classmethod
    def _unique(cls, tickers: list[str]) -> list[str]:
        return list(dict.fromkeys(tickers))


class WindowConfig(_Strict):
    """Features, window length, target representation and the time split."""

    window: int = Field(
        default=10, ge=2, le=250, description="Trading days per input window, e.g. 10."
    )
    features: list[FeatureName] = Field(
        default_factory=lambda: list(DEFAULT_FEATURES),
        description=f"Input columns per day, close first, of {', '.join(FEATURES)}; "
        f"e.g. {', '.join(DEFAULT_FEATURES)}.",
    )
    target: TargetName = Field(
        default=DEFAULT_TARGET,
        description="vol_return: next-day log return in units of the window's own volatility; "
        "log_return: next-day log return, inputs normalised inside each window; "
        "minmax_close: the reference design's MinMax-scaled close, fitted per ticker on train.",
    )
    val_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of dates for validation, e.g. 0.1."
    )
    test_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of the latest dates held out for test, e.g. 0.1.",
    )

    @field_validator("features")
    @classmethod
    def _close_first(cls, features: list[str]) -> list[str]:
        if "close" not in features:
            raise ValueError("features must include 'close'")
        if len(set(features)) != len(features):
            raise ValueError(f"features repeat a name: {features}")
        return features


# Above the S&P 500's 490k training windows (10 days, 5 years): that universe trains on every
# window, as before the budget; a larger one samples (benchmarks/README.md, "Scale").
EPOCH_WINDOWS = 2**19


class TrainConfig(_Strict):
    """Optimisation settings: Adam on MSE with early stopping."""

    epochs: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="Most epochs; early stopping may end sooner, e.g. 50.",
    )
    batch_size: int = Field(
        default=32, ge=1, le=65_536, description="Windows per training step, e.g. 32."
    )
    learning_rate: float = Field(
        default=1e-3, gt=0, le=1, description="Adam learning rate, e.g. 0.001."
    )
    growth_windows: int | None = Field(
        default=50_000,
        ge=1,
        description="Training windows batch_size and patience are meant for, e.g. 50000: from "
        "twice as many on, each doubling of the windows doubles the batch (at most 32-fold) and "
        "raises the learning rate √2-fold, and early stopping waits as many windows as patience "
        "epochs of twice this many (at least 2 epochs); null keeps batch_size and patience. "
        "See benchmarks/README.md.",
    )
    patience: int = Field(
        default=5,
        ge=1,
        description="Epochs without a better validation loss before stopping, e.g. 5.",
    )
    epoch_windows: int | None = Field(
        default=EPOCH_WINDOWS,
        ge=256,
        description="Most training windows one epoch reads, e.g. 524288: a universe with more "
        "trains each epoch on a fresh seeded sample of this many, and fits the interval scale, "
        "calibration and validation on fixed samples of this many, so a night costs the same "
        "however many tickers it has; fewer are all read, every epoch. null (--full-retrain): "
        "every window. See benchmarks/README.md.",
    )
    grad_clip: float = Field(default=1.0, gt=0, description="Gradient norm clip, e.g. 1.0.")
    seed: int = Field(default=42, description="Random seed: the same seed gives the same model.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto (CUDA when available), cpu or cuda."
    )
    shrink_output: bool = Field(
        default=True,
        description="Return targets: scale predicted returns by the factor in [0, 1] that the "
        "validation windows support beyond chance (0 = the naive forecast); "
        "see benchmarks/README.md.",
    )


@dataclass(frozen=True)
class RegistryConfig:
    """What registering a version reads: the tracking URI, who may move `champion` (auto:
    the gate; manual: people), and the data source its model card names."""

    tracking_uri: str
    promotion: Literal["auto", "manual"]
    source: str
    promotion_alpha: float | None = None  # the auto gate promotes only when p < it (None: off)
    # The model the nightly registers into for review (None: MODEL_NAME itself, where the
    # gate may move `champion`); `champion` is always MODEL_NAME's.
    candidates: str | None = None

    @property
    def model(self) -> str:
        """The registered model new versions go to."""
        return self.candidates or MODEL_NAME


class PipelineConfig(_Strict):
    """Everything one pipeline run needs."""

    home: Annotated[Path, AfterValidator(check_home)] = Field(
        default_factory=default_home,
        description="Folder for prices, reports and the local MLflow store, e.g. "
        "/srv/closecast; default $CLOSECAST_HOME, else .closecast in the working folder.",
    )
    data: DataConfig = Field(default_factory=DataConfig, description="Source, tickers, as_of.")
    windows: WindowConfig = Field(
        default_factory=WindowConfig, description="Features, window length, target, splits."
    )
    lstm: LSTMConfig = Field(
        default_factory=LSTMConfig, description="hidden_size (e.g. 32), num_layers, dropout."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="Epochs, batch size, learning rate, seed, device."
    )
    promotion: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: the gate may move `champion`; manual: people promote by hand.",
    )
    promotion_alpha: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="The gate promotes only when its one-sided Diebold–Mariano p-value is "
        "below this, e.g. 0.05; empty: a lower interval score is enough.",
    )
    tracking_uri: Annotated[str | None, AfterValidator(check_tracking_uri)] = Field(
        default=None,
        description="MLflow tracking URI, e.g. http://127.0.0.1:5000; "
        "empty = $MLFLOW_TRACKING_URI, else `sqlite:///<home>/mlflow.db`.",
    )
    experiment: str = Field(default=EXPERIMENT, description="MLflow experiment of the runs.")
    candidates_model: Annotated[str | None, AfterValidator(check_model_name)] = Field(
        default=None,
        description="Registered model the nightly registers into for review, e.g. "
        "closecast-lstm-candidates: reviewers copy approved versions into closecast-lstm, "
        "whose `champion` predicts. Empty: $CLOSECAST_CANDIDATES_MODEL, else none (one "
        "model: the gate moves `champion` itself).",
    )

    @model_validator(mode="after")
    def _sample_defaults(self) -> "PipelineConfig":
        if not self.data.tickers and self.data.source == "sample":
            data = self.data.model_copy(update={"tickers": list(SAMPLE_TICKERS)})
            object.__setattr__(self, "data", data)
        return self

    @property
    def mlflow_uri(self) -> str:
        """The tracking URI this run logs to: `tracking_uri`, else `$MLFLOW_TRACKING_URI`,
        else `sqlite:///<home>/mlflow.db`.

        The environment is read here, when the URI is used, never stored in the config:
        a config serialised into a deployment follows the environment of whoever runs it.
        """
        return (
            self.tracking_uri
            or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{self.home / 'mlflow.db'}"
        )

    @property
    def registry(self) -> RegistryConfig:
        """The part of the config that registering a version reads."""
        return RegistryConfig(
            self.mlflow_uri, self.promotion, self.data.source, self.promotion_alpha, self.candidates
        )

    @property
    def candidates(self) -> str | None:
        """The candidates model: `candidates_model`, else `$CLOSECAST_CANDIDATES_MODEL`, else
        None; read when used, like the tracking URI, so a deployment follows its environment."""
        name = self.candidates_model or os.environ.get(CANDIDATES_ENV) or None
        return check_model_name(name) if name else None

    @property
    def prices_dir(self) -> Path:
        return self.home / "prices"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "mlartifacts"


def overlay_config(given: PipelineConfig, base: PipelineConfig) -> PipelineConfig:
    """`base` with the fields `given` sets, sub-config by sub-config: what a partial config
    passed to a deployment's run means (the deployment's config, but for what it names).

    A field counts as set when it was given (pydantic's `model_fields_set`),
    not when it only took its default: `{"train": {"epochs": 1}}` keeps
    base's home, data and every other training setting.
    """
    return _overlay(given, base)


def _overlay(given: BaseModel, base: BaseModel) -> Any:
    updates: dict[str, Any] = {}
    for name in given.model_fields_set:
        value, under = getattr(given, name), getattr(base, name)
        updates[name] = _overlay(value, under) if isinstance(value, BaseModel) else value
    # Validated again: the result is checked as a whole (sample's tickers, the home).
    return type(base).model_validate({**dict(base), **updates})
