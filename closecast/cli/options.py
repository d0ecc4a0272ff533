"""The command line's options, drawn from the config models, and the one builder.

Every model and training flag is a row of `MODEL_OPTIONS`: the flag and the
config field it sets. Its default, type and help come from that field, so a
default is typed once, in core/config.py. The data flags (--tickers,
--tickers-file, --source, --as-of, --fetch-rate) are the fields of `DataOptions`.
`with_model_options` and `with_data_options` give a command those flags in
place of one parameter; `build_config` turns a command's options into the
`PipelineConfig`, with a one-line `InputError` naming the flag for a bad value.
"""

import dataclasses
import functools
import inspect
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, get_origin, get_type_hints

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from closecast.core.config import (
    DataConfig,
    PipelineConfig,
    TrainConfig,
    check_ticker,
    check_tracking_uri,
)
from closecast.core.errors import InputError
from closecast.core.sources import SOURCE_HELP, check_source

TickersOpt = Annotated[
    str | None, typer.Option("--tickers", help="Comma-separated tickers, e.g. AAPL,MSFT.")
]
TickersFileOpt = Annotated[
    Path | None, typer.Option("--tickers-file", help="One ticker per line; # starts a comment.")
]
SourceOpt = Annotated[str, typer.Option("--source", help=f"{SOURCE_HELP}.")]
DEFAULT_SOURCE: str = DataConfig.model_fields["source"].default
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="YYYY-MM-DD; default: the last date with data.")
]
# Text, checked by the config's field: a value that is no number is named in its message.
FetchRateOpt = Annotated[
    str,
    typer.Option(
        "--fetch-rate",
        help="Most tickers asked of yfinance per minute, e.g. 60 (a Prefect rate limit; "
        "local sources are not limited).",
    ),
]
DEFAULT_FETCH_RATE = f"{DataConfig.model_fields['fetch_rate'].default:g}"
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Data folder; default $CLOSECAST_HOME or .closecast.")
]
TaskRunnerOpt = Annotated[
    str,
    typer.Option(
        "--task-runner", help="default (threads) or dask (a local Dask cluster, or --dask-address)."
    ),
]
DaskAddressOpt = Annotated[
    str | None,
    typer.Option("--dask-address", help="Scheduler of an existing Dask cluster, tcp://HOST:PORT."),
]
LOOPBACK = "127.0.0.1"
# Each command's --host says what it binds: the temporary Prefect API of run, predict and
# backfill always listens on 127.0.0.1, serve's Prefect server on --host.
DaskHostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        help="With --task-runner dask: the address the local Dask cluster's dashboards "
        "listen on. Default 127.0.0.1: this machine only; 0.0.0.0 exposes them to the network.",
    ),
]
HostOpt = Annotated[
    str,
    typer.Option(
        "--host",
        help="Address serve's Prefect server (its API and UI) listens on, and with "
        "--task-runner dask the local Dask cluster's dashboards. Default 127.0.0.1: this "
        "machine only; 0.0.0.0 exposes them to the network.",
    ),
]
NotifyUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--notify-url",
        help="Alerts (nightly failed or late, report unhealthy) POST here: http(s)://HOST/PATH.",
    ),
]
NotifyBlockOpt = Annotated[
    str | None,
    typer.Option(
        "--notify-block",
        help="Alerts go through this Prefect notification block, TYPE/NAME "
        "(slack-webhook/my-team, sendgrid-email/ops).",
    ),
]


@dataclass(frozen=True)
class DataOptions:
    """The flags that choose the prices; each field is one Typer option."""

    tickers: TickersOpt = None
    tickers_file: TickersFileOpt = None
    source: SourceOpt = DEFAULT_SOURCE
    as_of: AsOfOpt = None
    fetch_rate: FetchRateOpt = DEFAULT_FETCH_RATE


def field_info(model: Any, name: str) -> FieldInfo:
    """A field's type, default and description, of a pydantic model or a dataclass."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_fields[name]
    default = {f.name: f.default for f in dataclasses.fields(model)}[name]
    return FieldInfo.from_annotated_attribute(
        get_type_hints(model, include_extras=True)[name], default
    )


@dataclass(frozen=True)
class ConfigOption:
    """A flag that sets one field of a section of `PipelineConfig`."""

    flag: str
    section: str  # windows, lstm or train
    field: str

    @property
    def name(self) -> str:
        """The Python parameter's name: `--batch-size` -> batch_size."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def info(self) -> FieldInfo:
        return field_info(PipelineConfig.model_fields[self.section].annotation, self.field)

    @property
    def is_list(self) -> bool:
        return get_origin(self.info.annotation) is list

    def parameter(self) -> inspect.Parameter:
        """The Typer option: numbers (and optional ints) as numbers; lists comma-separated;
        choices as text, so pydantic's message names the bad choice."""
        info = self.info
        numbers: dict[Any, type] = {int: int, float: float, int | None: int}  # None: no flag
        kind = numbers.get(info.annotation, str)
        default = info.get_default(call_default_factory=True)
        help_text = info.description or ""
        if self.is_list:
            default, help_text = ",".join(default), f"{help_text} Comma-separated."
        option = typer.Option(self.flag, help=help_text)
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[kind, option],
        )

    def parse(self, value: Any) -> Any:
        return [v.strip() for v in value.split(",")] if self.is_list else value


MODEL_OPTIONS = (
    ConfigOption("--epochs", "train", "epochs"),
    ConfigOption("--window", "windows", "window"),
    ConfigOption("--features", "windows", "features"),
    ConfigOption("--target", "windows", "target"),
    ConfigOption("--hidden", "lstm", "hidden_size"),
    ConfigOption("--dropout", "lstm", "dropout"),
    ConfigOption("--distribution", "lstm", "distribution"),
    ConfigOption("--batch-size", "train", "batch_size"),
    ConfigOption("--learning-rate", "train", "learning_rate"),
    ConfigOption("--patience", "train", "patience"),
    ConfigOption("--epoch-windows", "train", "epoch_windows"),
    ConfigOption("--seed", "train", "seed"),
    ConfigOption("--device", "train", "device"),
)
# Config fields -> the flags that set them, so an out-of-range value names the flag a person typed.
FLAGS = {
    "home": "--home",
    "data.source": "--source",
    "data.as_of": "--as-of",
    "data.fetch_rate": "--fetch-rate",
    "promotion_alpha": "--promotion-alpha",
} | {f"{o.section}.{o.field}": o.flag for o in MODEL_OPTIONS}


def in_place_of(
    name: str, parameters: list[inspect.Parameter], collect: Callable[[dict[str, Any]], Any]
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A decorator giving a command `parameters` (Typer options) in place of its parameter
    `name`, which receives `collect` of their values by name."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command)
        replaced: list[inspect.Parameter] = []
        for parameter in signature.parameters.values():
            replaced += parameters if parameter.name == name else [parameter]

        @functools.wraps(command)
        def with_options(**kwargs: Any) -> None:
            values = {parameter.name: kwargs.pop(parameter.name) for parameter in parameters}
            command(**kwargs, **{name: collect(values)})

        with_options.__signature__ = signature.replace(parameters=replaced)  # type: ignore[attr-defined]
        return with_options

    return decorate


# Every window, every epoch, however large the universe (train.epoch_windows = null).
FULL_RETRAIN = inspect.Parameter(
    "full_retrain",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[
        bool,
        typer.Option(
            "--full-retrain",
            help="Train every epoch on every window, not on a sample of "
            f"{TrainConfig.model_fields['epoch_windows'].default:,} when the universe has more.",
        ),
    ],
)
with_model_options = in_place_of(
    "model", [*(o.parameter() for o in MODEL_OPTIONS), FULL_RETRAIN], dict
)


def with_data_options(
    *, as_of: bool = True
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The `DataOptions` flags in place of the command's `data` parameter (--as-of optional)."""
    parameters = [
        inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type
        )
        for f in dataclasses.fields(DataOptions)
        if as_of or f.name != "as_of"
    ]
    return in_place_of("data", parameters, lambda values: DataOptions(**values))


def parse_date(value: str | None, flag: str) -> date | None:
    """An ISO date, or InputError naming the flag and the value."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InputError(f"invalid {flag} {value!r}: expected YYYY-MM-DD") from None


def parse_tickers(tickers: str | None, tickers_file: Path | None) -> list[str]:
    """Tickers from --tickers and --tickers-file, validated before anything touches disk."""
    raw: list[str] = []
    if tickers is not None:
        raw += [t for t in tickers.split(",") if t.strip()]
        if not raw:
            raise InputError(f"no tickers given: --tickers {tickers!r} names none")
    if tickers_file is not None:
        if not tickers_file.is_file():
            raise InputError(f"tickers file not found: {tickers_file}")
        listed = [line.split("#", 1)[0].strip() for line in tickers_file.read_text().splitlines()]
        if not any(listed):
            raise InputError(f"no tickers given: --tickers-file {tickers_file} lists none")
        raw += [t for t in listed if t]
    try:
        return list(dict.fromkeys(check_ticker(t) for t in raw))
    except ValueError as exc:
        raise InputError(str(exc)) from None


def data_fields(data: DataOptions) -> dict[str, Any]:
    """The `DataConfig` fields the data flags describe."""
    try:
        check_source(data.source)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    symbols = parse_tickers(data.tickers, data.tickers_file)
    if not symbols and data.source.startswith("csv:"):
        from closecast.tasks.data.sources.csv import CsvSource

        symbols = CsvSource(Path(data.source.removeprefix("csv:")).expanduser()).tickers()
    if not symbols and data.source == "yfinance":
        raise InputError("--tickers or --tickers-file is required with --source yfinance")
    return {
        "source": data.source,
        "tickers": symbols,
        "as_of": parse_date(data.as_of, "--as-of"),
        "fetch_rate": data.fetch_rate,
    }


def build_config(
    home: Path | None,
    data: DataOptions | None = None,
    *,
    model: Mapping[str, Any] | None = None,
    no_promote: bool = False,
    promotion_alpha: float | None = None,
    uses_mlflow: bool = True,
) -> PipelineConfig:
    """The `PipelineConfig` a command's options describe; what they leave out is the model's
    default. Checked in full before anything touches disk.

    Raises:
        InputError: one line naming the flag (or variable) and the bad value.
    """
    fields: dict[str, Any] = {} if home is None else {"home": home}
    if data is not None:
        fields["data"] = data_fields(data)
    for option in MODEL_OPTIONS:
        if model is not None and option.name in model:
            section = fields.setdefault(option.section, {})
            section[option.field] = option.parse(model[option.name])
    if model is not None and model.get("full_retrain"):
        fields.setdefault("train", {})["epoch_windows"] = None
    if no_promote:
        fields["promotion"] = "manual"
    if promotion_alpha is not None:
        fields["promotion_alpha"] = promotion_alpha
    try:
        config = PipelineConfig(**fields)
        if uses_mlflow:  # $MLFLOW_TRACKING_URI, when set, is checked like the field would be
            check_tracking_uri(config.mlflow_uri)
    except ValidationError as exc:
        raise InputError(_one_line_of(exc)) from None
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if data is not None:
        check_folders(config, uses_mlflow=uses_mlflow)
    return config


def check_folders(config: PipelineConfig, *, uses_mlflow: bool) -> None:
    """The folders of the home a flow writes to are folders, where they exist.

    A `reports` that is a file would otherwise be found after training and
    registering, when the report is written (and the version rolled back).

    Raises:
        InputError: one line naming the folder that is a file.
    """
    folders = {"prices": config.prices_dir}
    if uses_mlflow:
        folders["reports"] = config.reports_dir
        if config.mlflow_uri.startswith("sqlite:"):  # artifacts go under the home
            folders["artifacts"] = config.artifacts_dir
    for what, folder in folders.items():
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{what} folder {str(folder)!r} is a file, not a folder")


def _one_line_of(exc: ValidationError) -> str:
    """The first validation error, naming the flag a person typed and the value."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
    if first["type"] == "value_error":  # our own validators' messages name the value
        return str(first["msg"]).removeprefix("Value error, ")
    return f"invalid {FLAGS.get(where, where)} {first.get('input')!r}: {first['msg']}"


def parse_host(value: str) -> str:
    """The --host to listen on: an IP address, or `localhost` (127.0.0.1)."""
    text = value.strip()
    if text.lower() == "localhost":
        return LOOPBACK
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise InputError(
            f"invalid --host {value!r}: expected an IP address such as 127.0.0.1 or 0.0.0.0"
        ) from None
