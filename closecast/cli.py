"""The `closecast` command line."""

import logging
import os
import sys
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from typer.exceptions import TyperException

from core.config import (
    DataConfig,
    PipelineConfig,
    TrainConfig,
    WindowConfig,
    check_source,
    check_ticker,
    default_home,
)
from core.errors import InputError, PipelineError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="closecast: nightly LSTM forecasts of tomorrow's closes (Prefect + MLflow).",
)

TickersOpt = Annotated[
    str | None, typer.Option("--tickers", help="Comma-separated tickers, e.g. AAPL,MSFT.")
]
TickersFileOpt = Annotated[
    Path | None, typer.Option("--tickers-file", help="One ticker per line; # starts a comment.")
]
SourceOpt = Annotated[
    str, typer.Option("--source", help="yfinance, sample, or csv:PATH (folder or long file).")
]
AsOfOpt = Annotated[
    str | None, typer.Option("--as-of", help="YYYY-MM-DD; default: the last date with data.")
]
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

FeaturesOpt = Annotated[str, typer.Option(help="Comma-separated: close,volume,open,high,low.")]
TargetOpt = Annotated[str, typer.Option(help="vol_return, log_return or minmax_close.")]
DEFAULT_FEATURES = ",".join(WindowConfig().features)
DEFAULT_TARGET = WindowConfig().target


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


def data_config(
    source: str, tickers: str | None, tickers_file: Path | None, as_of: str | None
) -> DataConfig:
    """The DataConfig the common options describe."""
    try:
        check_source(source)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    symbols = parse_tickers(tickers, tickers_file)
    if not symbols and source.startswith("csv:"):
        from tasks.sources.csv import CsvSource

        symbols = CsvSource(Path(source.removeprefix("csv:")).expanduser()).tickers()
    if not symbols and source == "yfinance":
        raise InputError("--tickers or --tickers-file is required with --source yfinance")
    return DataConfig(source=source, tickers=symbols, as_of=parse_date(as_of, "--as-of"))


class _DropLocked(logging.Filter):
    """Prefect's ephemeral SQLite server logs harmless lock contention."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "database is locked" not in record.getMessage()


class _NoTracebackForExpected(logging.Filter):
    """Expected failures (bad input, a failed pipeline) get one line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError | PipelineError):
            record.exc_info, record.exc_text = None, None
        return True


_DROP_LOCKED, _NO_TRACEBACK = _DropLocked(), _NoTracebackForExpected()


def _quiet_noise() -> None:
    """Keep output readable: no lock noise, no tracebacks for expected errors."""
    for name in ("prefect", "prefect.server", "uvicorn.error", "sqlalchemy", "alembic"):
        logging.getLogger(name).addFilter(_DROP_LOCKED)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(_NO_TRACEBACK)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@app.command()
def run(
    tickers: TickersOpt = None,
    tickers_file: TickersFileOpt = None,
    source: SourceOpt = "yfinance",
    as_of: AsOfOpt = None,
    home: HomeOpt = None,
    epochs: Annotated[
        int, typer.Option(help="Training epochs (early stopping may end sooner).")
    ] = 50,
    window: Annotated[int, typer.Option(help="Days per input window.")] = 10,
    features: FeaturesOpt = DEFAULT_FEATURES,
    target: TargetOpt = DEFAULT_TARGET,
    hidden: Annotated[int, typer.Option(help="LSTM hidden units.")] = 32,
    dropout: Annotated[float, typer.Option(help="Dropout before the dense head.")] = 0.2,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    no_promote: Annotated[bool, typer.Option("--no-promote", help="Never move champion.")] = False,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
) -> None:
    """The nightly flow: fetch, validate, train, evaluate, register, predict, report."""
    config = _build(
        lambda: PipelineConfig(
            home=home or default_home(),
            data=data_config(source, tickers, tickers_file, as_of),
            windows=WindowConfig(
                window=window, features=[f.strip() for f in features.split(",")], target=target
            ),
            lstm={"hidden_size": hidden, "dropout": dropout},  # type: ignore[arg-type]
            train=TrainConfig(
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                patience=patience,
                seed=seed,
                device=device,
            ),
            promotion="manual" if no_promote else "auto",
            tracking_uri=tracking_uri_from_env(),
        )
    )
    flow_runner = task_runner(runner, dask_address)
    from flows.nightly import nightly

    result = with_runner(nightly, flow_runner)(config)
    typer.echo(f"report: {result.report_path}")
    typer.echo(f"mlflow run: {result.run_id}")
    typer.echo(
        f"model: closecast-lstm v{result.version} ({result.promotion}); "
        f"predictions by v{result.predicting_version}"
    )
    typer.echo(f"skill vs naive: {result.metrics['skill']:+.4f}")


@app.command()
def fetch(
    tickers: TickersOpt = None,
    tickers_file: TickersFileOpt = None,
    source: SourceOpt = "yfinance",
    as_of: AsOfOpt = None,
    home: HomeOpt = None,
) -> None:
    """Fetch and store prices only."""
    config = _build(
        lambda: PipelineConfig(
            home=home or default_home(), data=data_config(source, tickers, tickers_file, as_of)
        )
    )
    from flows.fetch import fetch as fetch_flow

    data, root = config.data, config.home
    result = fetch_flow(data, root)
    for ticker in data.tickers:
        if ticker in result.failures:
            state = result.failures[ticker].removeprefix(f"{ticker}: ")
        elif ticker in result.frames:
            state = f"{len(result.frames[ticker])} rows fetched"
        else:
            state = "store already up to date"
        typer.echo(f"{ticker}: {state}")
    typer.echo(f"store: {root / 'prices'}")


# --- operations: predict, backfill, serve, and the task runner -----------------------------


def task_runner(kind: str, address: str | None):  # type: ignore[no-untyped-def]
    """The task runner --task-runner names (None: the flow's own thread pool)."""
    if kind not in {"default", "dask"}:
        raise InputError(f"invalid --task-runner {kind!r}: expected default or dask")
    if kind == "default":
        if address:
            raise InputError(f"--dask-address {address!r} needs --task-runner dask")
        return None
    from prefect_dask import DaskTaskRunner

    logging.getLogger("distributed").setLevel(logging.WARNING)

    if address:
        if not address.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
            raise InputError(f"invalid --dask-address {address!r}: expected tcp://HOST:PORT")
        return DaskTaskRunner(address=address)
    # Small on purpose: 2 cores here. Threads, not processes: per-ticker frames are
    # handed over without pickling and workers start in a second.
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": False}
    )


def with_runner(flow, runner):  # type: ignore[no-untyped-def]
    """`flow`, on `runner` when one is given."""
    return flow if runner is None else flow.with_options(task_runner=runner)


@app.command()
def predict(
    tickers: TickersOpt = None,
    tickers_file: TickersFileOpt = None,
    source: SourceOpt = "yfinance",
    as_of: AsOfOpt = None,
    home: HomeOpt = None,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
) -> None:
    """Fetch and predict the next session with the champion model (no training)."""
    config = _build(
        lambda: PipelineConfig(
            home=home or default_home(),
            data=data_config(source, tickers, tickers_file, as_of),
            tracking_uri=tracking_uri_from_env(),
        )
    )
    flow_runner = task_runner(runner, dask_address)
    from flows.predict import predict as predict_flow
    from tasks.inference import require_champion

    require_champion(config.mlflow_uri)  # fail in one line, before any flow run starts

    result = with_runner(predict_flow, flow_runner)(config)
    typer.echo(f"report: {result.report_path}")
    typer.echo(f"mlflow run: {result.run_id}")
    typer.echo(f"predictions by closecast-lstm v{result.version} (champion)")


@app.command()
def backfill(
    start: Annotated[str, typer.Option("--start", help="First date, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last date, YYYY-MM-DD.")],
    retrain_every: Annotated[
        int, typer.Option("--retrain-every", help="Retrain every N sessions.")
    ] = 1,
    register: Annotated[
        bool, typer.Option("--register", help="Register each trained model (default: none).")
    ] = False,
    tickers: TickersOpt = None,
    tickers_file: TickersFileOpt = None,
    source: SourceOpt = "yfinance",
    home: HomeOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 50,
    window: Annotated[int, typer.Option(help="Days per input window.")] = 10,
    features: FeaturesOpt = DEFAULT_FEATURES,
    target: TargetOpt = DEFAULT_TARGET,
    hidden: Annotated[int, typer.Option(help="LSTM hidden units.")] = 32,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="With --register: never move champion.")
    ] = False,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
) -> None:
    """Point-in-time runs for every XNYS session in [start, end] (experiment closecast-backfill)."""
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    assert first is not None and last is not None
    if first > last:
        raise InputError(f"--start {start} is after --end {end}")
    if retrain_every < 1:
        raise InputError(f"invalid --retrain-every {retrain_every}: expected 1 or more")
    from core.calendar import sessions_between

    if not sessions_between(first, last):
        raise InputError(f"no XNYS session between --start {start} and --end {end}")
    config = _build(
        lambda: PipelineConfig(
            home=home or default_home(),
            data=data_config(source, tickers, tickers_file, None),
            windows=WindowConfig(
                window=window, features=[f.strip() for f in features.split(",")], target=target
            ),
            lstm={"hidden_size": hidden},  # type: ignore[arg-type]
            train=TrainConfig(epochs=epochs, seed=seed, device=device),
            promotion="manual" if no_promote else "auto",
            tracking_uri=tracking_uri_from_env(),
        )
    )
    flow_runner = task_runner(runner, dask_address)
    from flows.backfill import backfill as backfill_flow

    result = with_runner(backfill_flow, flow_runner)(
        config, first, last, retrain_every=retrain_every, register_versions=register
    )
    for path in result.reports:
        typer.echo(f"report: {path}")
    if result.skipped:
        days = ", ".join(d.isoformat() for d in result.skipped)
        typer.echo(f"already reported, skipped: {days}")
    typer.echo(f"scorecard: {config.reports_dir / 'scorecard.csv'}")


@app.command()
def serve(
    tickers: TickersOpt = None,
    tickers_file: TickersFileOpt = None,
    source: SourceOpt = "yfinance",
    home: HomeOpt = None,
    port: Annotated[
        int, typer.Option("--port", help="Port of the local Prefect server (no PREFECT_API_URL).")
    ] = 4200,
    no_promote: Annotated[bool, typer.Option("--no-promote", help="Never move champion.")] = False,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
) -> None:
    """Serve nightly (weeknights 18:30 New York), predict and backfill until Ctrl-C."""
    if not 1 <= port <= 65535:
        raise InputError(f"invalid --port {port}: expected 1-65535")
    config = _build(
        lambda: PipelineConfig(
            home=home or default_home(),
            data=data_config(source, tickers, tickers_file, None),
            promotion="manual" if no_promote else "auto",
            tracking_uri=tracking_uri_from_env(),
        )
    )
    flow_runner = task_runner(runner, dask_address)
    from closecast.serve import serve_deployments

    serve_deployments(config, port, flow_runner)


def tracking_uri_from_env() -> str | None:
    """`$MLFLOW_TRACKING_URI` when set; None lets PipelineConfig use `<home>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def _registry(home: Path | None):  # type: ignore[no-untyped-def]
    """A client for the registry the pipeline would use, after one successful contact."""
    from tasks.mlflow_connection import connect_mlflow

    config = _build(
        lambda: PipelineConfig(home=home or default_home(), tracking_uri=tracking_uri_from_env())
    )
    uri = config.mlflow_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise InputError(
            f"no MLflow database at {uri.removeprefix('sqlite:///')}: "
            "run `closecast run` first, or set MLFLOW_TRACKING_URI"
        )
    return uri, connect_mlflow(uri)


def _as_of_instant(value: str) -> datetime:
    """An ISO date (its end, UTC) or datetime (UTC unless it says otherwise)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime.combine(day, time.max, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(
            f"invalid --at {value!r}: expected YYYY-MM-DD or an ISO datetime"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@app.command()
def models(
    home: HomeOpt = None,
    history: Annotated[
        bool, typer.Option("--history", help="Every alias move: when, from, to, by whom.")
    ] = False,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Which version was champion at YYYY-MM-DD (end of day, UTC)."),
    ] = None,
) -> None:
    """List registered versions: version, aliases, created, metrics, promotion decision."""
    from core.config import MODEL_NAME
    from tasks.aliases import CHAMPION, alias_at, alias_history, version_table

    when = _as_of_instant(at) if at is not None else None
    uri, client = _registry(home)
    if when is not None:
        version = alias_at(alias_history(client), CHAMPION, when)
        typer.echo(
            f"{CHAMPION} at {when.isoformat(timespec='seconds')}: "
            + (f"{MODEL_NAME} v{version}" if version else "none recorded")
        )
        return
    if history:
        moves = alias_history(client)
        if not moves:
            typer.echo(f"no alias moves recorded for {MODEL_NAME} at {uri}")
        for m in moves:
            typer.echo(
                f"{m.at.isoformat(timespec='seconds')}  {m.alias:<10}  "
                f"v{m.previous or '-'} -> v{m.version or '-'}  by {m.by}"
                + (f"  ({m.reason})" if m.reason else "")
            )
        return
    table = version_table(client)
    if table.empty:
        typer.echo(f"no versions of {MODEL_NAME} registered at {uri}")
        return
    typer.echo(table.to_string(index=False))


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registry version to make champion.")],
    home: HomeOpt = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the alias history.")
    ] = "manual review",
) -> None:
    """Point `champion` at VERSION; promoting the previous version is the rollback."""
    import getpass

    from core.config import MODEL_NAME
    from tasks.aliases import UnknownVersion, promote_version

    if not version.isdigit():
        raise InputError(f"invalid version {version!r}: expected a version number")
    uri, _ = _registry(home)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown user"
    try:
        move = promote_version(uri, version, f"closecast promote by {user}", reason)
    except UnknownVersion as exc:
        raise InputError(str(exc)) from None
    typer.echo(f"champion: {MODEL_NAME} v{move.version} (was v{move.previous or '-'})")


# Config fields -> the flags that set them, so an out-of-range value names the flag a person typed.
_FLAGS = {
    "home": "--home",
    "data.source": "--source",
    "data.as_of": "--as-of",
    "windows.window": "--window",
    "windows.features": "--features",
    "windows.target": "--target",
    "lstm.hidden_size": "--hidden",
    "lstm.dropout": "--dropout",
    "train.epochs": "--epochs",
    "train.batch_size": "--batch-size",
    "train.learning_rate": "--learning-rate",
    "train.patience": "--patience",
    "train.seed": "--seed",
    "train.device": "--device",
    "tracking_uri": "MLFLOW_TRACKING_URI",
}


def _build(make):  # type: ignore[no-untyped-def]
    """Build a config, turning validation errors into one-line InputErrors naming the flag."""
    try:
        return make()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        if first["type"] == "value_error":  # our own validators' messages name the value
            raise InputError(str(first["msg"]).removeprefix("Value error, ")) from None
        value = first.get("input")
        raise InputError(f"invalid {_FLAGS.get(where, where)} {value!r}: {first['msg']}") from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 success, 1 pipeline failure, 2 bad usage or input."""
    # No telemetry from the embedded Prefect server: this runs unattended, often offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _quiet_noise()
    from closecast.prefect_api import temporary_api

    try:
        with temporary_api(sys.argv[1:] if argv is None else argv):  # dies with us, even on kill -9
            app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("closecast: aborted", file=sys.stderr)
        return 1
    except TyperException as exc:  # click's usage errors, as Typer vendors click
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"closecast: error: {_one_line(Exception(message))}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except InputError as exc:
        print(f"closecast: error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"closecast: pipeline failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(
            f"closecast: pipeline failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
