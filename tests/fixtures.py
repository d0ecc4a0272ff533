"""Shared fixtures, helpers and the collection order, registered as a plugin by
tests/conftest.py (in the processes that run tests): one Prefect test harness per session,
tiny configs, tiny data."""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

import errno
import ipaddress
import shutil
import socket
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import prefect.main  # configures logging: see below
import prefect.testing.utilities
import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from closecast.cli.prefect_api import RECORDER_BATCHES
from closecast.core.config import (
    FEATURES,
    DataConfig,
    PipelineConfig,
    TrainConfig,
    WindowConfig,
)
from closecast.models.derived import extra_rows, with_derived
from closecast.models.lstm import LSTMConfig
from tests.fakes import fake_yahoo, yahoo_frame  # noqa: F401
from tests.mlflow_fixtures import mlflow_home, mlflow_template  # noqa: F401
from tests.prefect_server import prefect_server, prefect_template, serve_api  # noqa: F401

# Importing `prefect.main` (above) configures Prefect's logging, which replaces the root
# logger's handlers: done at collection, before any test, not inside whichever test first
# imports a flow, where it removed that test's caplog handler (its records then missing).

# A test that needs one of these fixtures is `slow` without saying so: the first three start
# a Prefect API (flows run on it), the last reads the whole S&P 500 file. `make test-fast`
# (`pytest -m "not slow"`) leaves slow tests out; `make test` runs them all.
SLOW_FIXTURES = frozenset({"prefect_harness", "prefect_server", "serve_api", "sp500_frames"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a slow fixture, directly or through another fixture;
    then put the files with the most slow tests first, each file's tests still together and in
    their order. xdist (`--dist loadfile`) hands out files in this order: the long ones start
    first and the quick ones fill in at the end, instead of one long file running alone last
    (`--no-loadscope-reorder` in pyproject.toml keeps xdist from re-sorting them by size)."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


_SHARED_FILE = Path("shared") / "data" / "sp500_5yr" / "all_stocks_5yr.csv.gz"


def _find_shared_data() -> Path:
    """`../shared/data/...` beside the repository, also from a git worktree nested deeper."""
    parents = Path(__file__).resolve().parents[1:]
    found = [p / _SHARED_FILE for p in parents if (p / _SHARED_FILE).is_file()]
    return found[0] if found else parents[1] / _SHARED_FILE


SHARED_DATA = _find_shared_data()


@pytest.fixture(scope="session")
def sp500_frames() -> dict[str, pd.DataFrame]:
    """Every ticker of the shared S&P 500 file, read once through the csv source."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"{SHARED_DATA} is absent")
    from closecast.tasks.data.sources.csv import CsvSource

    source = CsvSource(SHARED_DATA)
    return source.download(source.tickers(), None, None).frames


class NetworkRefused(OSError):
    """A test tried to connect a socket off this machine: to the code, the network is down."""

    def __init__(self, address: object) -> None:
        super().__init__(errno.ENETUNREACH, f"tests never reach the network: refused {address!r}")


# Every address a socket tried to connect to during the running test, loopback included.
CONNECTIONS: list[Any] = []
# The stream connections refused (not loopback): any at the end of a test fails it, caught
# or not. A refused datagram socket is not listed: its connect sends nothing (dask's probe of
# the route to 8.8.8.8 is one), and refused, it cannot send later either.
REFUSED: list[Any] = []


def is_loopback(family: int, address: Any) -> bool:
    """True for a Unix socket, localhost, 127.0.0.0/8, ::1 (and ::ffff:127.x.x.x)."""
    if family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:  # another host name: reaching it takes DNS and the network
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def refuse_off_machine(connect: Callable[..., Any]) -> Callable[..., Any]:
    """`socket.connect` (or `connect_ex`) that refuses any address but loopback, before
    anything is sent, and records every address it is asked for."""

    def guarded(sock: socket.socket, address: Any) -> Any:
        CONNECTIONS.append(address)
        if not is_loopback(sock.family, address):
            if sock.type != socket.SOCK_DGRAM:
                REFUSED.append(address)
            raise NetworkRefused(address)
        return connect(sock, address)

    return guarded


@pytest.fixture(scope="session", autouse=True)
def _no_network() -> Iterator[None]:
    """Sockets connect to this machine only, for the whole session (fixtures included)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse_off_machine(socket.socket.connect))
        patch.setattr(socket.socket, "connect_ex", refuse_off_machine(socket.socket.connect_ex))
        yield


def take_refused() -> list[Any]:
    """The addresses refused since the last call; the record starts empty again."""
    refused = list(REFUSED)
    REFUSED.clear()
    return refused


@pytest.fixture(autouse=True)
def _fail_on_network_use(_no_network: None) -> Iterator[None]:
    """A test that tried to reach the network fails, even if its code caught the refusal."""
    CONNECTIONS.clear()
    take_refused()
    yield
    if refused := take_refused():
        tried = ", ".join(map(repr, refused))
        pytest.fail(f"the test tried to reach the network: {tried}", pytrace=False)


@pytest.fixture
def connections() -> list[Any]:
    """Addresses the test's sockets have tried to connect to so far, in order."""
    return CONNECTIONS


@pytest.fixture
def quick_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused tracking server is tried again after 10 ms waits instead of 1, 2 and 4 s:
    the same number of tries, seconds less of sleeping."""
    monkeypatch.setattr("closecast.tasks.mlflow.connection.REFUSED_WAITS_S", (0.01, 0.01, 0.01))


@pytest.fixture(autouse=True)
def _no_inherited_mlflow_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI.

    `mlflow.set_tracking_uri` writes them into os.environ, and the CLI honours
    $MLFLOW_TRACKING_URI, so one test's URI would otherwise leak into the next.
    """
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture(scope="session")
def prefect_harness(request: pytest.FixtureRequest) -> Iterator[None]:
    """Prefect's own API on a temporary SQLite database, for every flow test: Prefect's test
    harness, its database a copy of the migrated template (the harness makes its folder
    with `mkdtemp`, then its server migrates whatever `prefect-test.db` it finds there).

    As under the temporary API of a `closecast` command (closecast/cli/prefect_api.py), its
    flow runs send no heartbeats (Prefect's heartbeat thread holds each run's end by up to a
    second) and its task-run recorder writes in batches (one transaction per event made
    nearly every download chunk wait 2 s on a 503)."""

    template: Path = request.getfixturevalue("prefect_template")

    def seeded_folder() -> str:
        folder = tempfile.mkdtemp()
        shutil.copyfile(template, Path(folder) / "prefect-test.db")
        return folder

    with ExitStack() as harness:
        with pytest.MonkeyPatch.context() as starting:  # only while its server starts
            starting.setattr(prefect.testing.utilities, "mkdtemp", seeded_folder)
            for name, value in RECORDER_BATCHES.items():  # the server process inherits them
                starting.setenv(name, value)
            harness.enter_context(prefect_test_harness(server_startup_timeout=120))
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


def write_ticker_csvs(
    folder: Path, tickers: dict[str, int], start: str = "2020-01-02", sessions: int = 300
) -> Path:
    """A folder of Yahoo-style `TICKER.csv` files: the last n of `sessions` rows each."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (ticker, n) in enumerate(tickers.items()):
        frame = yahoo_frame(sessions, start=start, seed=i, base=50.0 + 40 * i).iloc[-n:]
        frame.index = frame.index.tz_localize(None).rename("Date")
        frame.to_csv(folder / f"{ticker}.csv")
    return folder


@pytest.fixture
def csv_folder(tmp_path: Path) -> Path:
    """Three tickers ending 2021-03-12: two with 300 rows, one with 40 (too short)."""
    return write_ticker_csvs(tmp_path / "csv", {"AAA": 300, "BBB": 300, "SHORT": 40})


# Rows before a feature frame's first that its derived features read (models/derived.py).
WARM_UP = extra_rows(FEATURES)


def feature_frame(raw: pd.DataFrame, start: str = "2021-01-04") -> pd.DataFrame:
    """Raw close/volume/open/high/low rows as compute_features leaves them: with every
    derived feature (range22, range66, volume60), less the first WARM_UP rows, which those
    read but have no value of; the rest dated on business days from `start`."""
    frame = with_derived(raw.reset_index(drop=True), FEATURES).iloc[WARM_UP:]
    return frame.set_axis(pd.bdate_range(start, periods=len(frame), name="date"))


def walk_frames(
    n: int = 120, calm: float = 0.01, stormy: float | None = None, range_share: float = 0.4
) -> dict[str, pd.DataFrame]:
    """Two tickers (AAA, BBB) of n business days of random-walk features (`feature_frame`,
    from WARM_UP rows more of prices): daily volatility `calm`, or `calm` then `stormy` from
    halfway through the n days; high and low lie ~range_share × volatility beyond the
    open and close."""
    rows = n + WARM_UP
    frames = {}
    for seed, ticker in enumerate(("AAA", "BBB")):
        rng = np.random.default_rng(seed)
        vol = np.full(rows, calm)
        if stormy is not None:
            vol[WARM_UP + n // 2 :] = stormy
        close = 50 * np.exp(np.cumsum(rng.normal(0, vol)))
        open_ = close * np.exp(rng.normal(0, 0.003, rows))
        spread = range_share * vol
        raw = pd.DataFrame(
            {
                "close": close,
                "volume": rng.uniform(1e5, 2e5, rows),
                "open": open_,
                "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, spread))),
                "low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, spread))),
            }
        )
        frames[ticker] = feature_frame(raw)
    return frames


def tiny_config(home: Path, source: str, tickers: list[str], **data: object) -> PipelineConfig:
    """Hidden 8, 2 epochs: fast enough for every test."""
    return PipelineConfig(
        home=home,
        data=DataConfig(source=source, tickers=tickers, **data),
        windows=WindowConfig(),
        lstm=LSTMConfig(hidden_size=8),
        train=TrainConfig(epochs=2, batch_size=64),
    )


def read_report(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False, na_values=[""])
