"""The `closecast` command line."""

import logging
import os
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from typer.exceptions import TyperException

from closecast.config import (
    DataConfig,
    PipelineConfig,
    TrainConfig,
    WindowConfig,
    check_source,
    check_ticker,
    default_home,
)
from closecast.errors import InputError, PipelineError
from models.lstm import LSTMConfig

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
    if tickers:
        raw += [t for t in tickers.split(",") if t.strip()]
    if tickers_file is not None:
        if not tickers_file.is_file():
            raise InputError(f"tickers file not found: {tickers_file}")
        for line in tickers_file.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                raw.append(line)
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
        from tasks.prices import CsvSource

        symbols = CsvSource(Path(source.removeprefix("csv:")).expanduser()).tickers()
    if not symbols and source == "yfinance":
        raise InputError("--tickers or --tickers-file is required with --source yfinance")
    return DataConfig(source=source, tickers=symbols, as_of=parse_date(as_of, "--as-of"))


def _quiet_noise() -> None:
    """Prefect's ephemeral SQLite server logs harmless lock contention; keep output readable."""

    class _DropLocked(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "database is locked" not in record.getMessage()

    for name in ("prefect", "prefect.server", "uvicorn.error", "sqlalchemy", "alembic"):
        logging.getLogger(name).addFilter(_DropLocked())
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
    features: Annotated[
        str, typer.Option(help="Comma-separated: close,volume,open,high,low.")
    ] = "close,volume,open",
    target: Annotated[
        str, typer.Option(help="vol_return, log_return or minmax_close.")
    ] = "vol_return",
    hidden: Annotated[int, typer.Option(help="LSTM hidden units.")] = 32,
    dropout: Annotated[float, typer.Option(help="Dropout before the dense head.")] = 0.2,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    patience: Annotated[int, typer.Option(help="Early-stopping patience in epochs.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    no_promote: Annotated[bool, typer.Option("--no-promote", help="Never move champion.")] = False,
) -> None:
    """The nightly flow: fetch, validate, train, evaluate, register, predict, report."""
    config = _build(
        lambda: PipelineConfig(
            home=home or default_home(),
            data=data_config(source, tickers, tickers_file, as_of),
            windows=WindowConfig(
                window=window, features=[f.strip() for f in features.split(",")], target=target
            ),
            lstm=LSTMConfig(hidden_size=hidden, dropout=dropout),
            train=TrainConfig(
                epochs=epochs,
                batch_size=batch_size,
                learning_rate=learning_rate,
                patience=patience,
                seed=seed,
                device=device,
            ),
            promotion="manual" if no_promote else "auto",
        )
    )
    from flows.nightly import nightly

    result = nightly(config)
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
    data = _build(lambda: data_config(source, tickers, tickers_file, as_of))
    from flows.fetch import fetch as fetch_flow

    root = home or default_home()
    result = fetch_flow(data, root)
    for ticker in data.tickers:
        state = result.failures.get(ticker, f"{len(result.frames.get(ticker, []))} rows fetched")
        typer.echo(f"{ticker}: {state}")
    typer.echo(f"store: {root / 'prices'}")


def _build(make):  # type: ignore[no-untyped-def]
    """Build a config, turning validation errors into one-line InputErrors."""
    try:
        return make()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        value = first.get("input")
        raise InputError(f"invalid {where} {value!r}: {first['msg']}") from None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 success, 1 pipeline failure, 2 bad usage or input."""
    # No telemetry from the embedded Prefect server: this runs unattended, often offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _quiet_noise()
    try:
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
