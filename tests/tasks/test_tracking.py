import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.exceptions import MlflowException

from core.config import PipelineConfig
from core.errors import PipelineError
from tasks.tracking import (
    artifact_location,
    configure_mlflow,
    connect_mlflow,
    ensure_experiment,
    flatten_params,
    plot_name,
    plot_predictions,
    plot_tickers,
    prices_table,
    table_digest,
    tracking_run,
    unreachable,
)
from tests.mlflow_fixtures import free_port

REFUSED = (
    "API request to http://127.0.0.1:9/api/2.0/mlflow/experiments/search failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
    '/api/2.0/mlflow/experiments/search (Caused by NewConnectionError("HTTPConnection(host='
    "'127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection refused\"))"
)


def _per_ticker(skills: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"ticker": list(skills), "skill": list(skills.values())})


@pytest.mark.parametrize(
    ("skills", "expected"),
    [
        ({"B": 0.1, "A": -0.2}, ["A", "B"]),
        (
            {f"T{i}": s for i, s in enumerate([0.5, -0.9, 0.1, 0.0, 0.3, -0.1, 0.9, -0.5])},
            ["T0", "T1", "T4", "T5", "T6", "T7"],  # worst T1 T7 T5, best T4 T0 T6
        ),
    ],
)
def test_plot_tickers_keeps_all_or_the_worst_and_best(
    skills: dict[str, float], expected: list[str]
) -> None:
    """Up to six tickers are all plotted; beyond that the three worst and three best by skill."""
    assert plot_tickers(_per_ticker(skills)) == expected


def _test_predictions(sessions: int, intervals: bool = True) -> pd.DataFrame:
    """AAA and BBB over `sessions` test windows; BBB's actual closes rise by 1 a session."""
    dates = pd.date_range("2021-01-04", periods=sessions, freq="B")
    last = np.arange(float(sessions)) + 100
    frames = []
    for ticker, shift in (("AAA", 0.0), ("BBB", 50.0)):
        frame = pd.DataFrame(
            {
                "ticker": ticker,
                "target_date": dates,
                "last_close": last + shift,
                "actual_close": last + shift + 1,
                "predicted_close": last + shift + 0.5,
            }
        )
        if intervals:  # the 80% band misses every other close, the 95% band none
            half = np.where(np.arange(sessions) % 2 == 0, 1.0, 0.25)
            frame["lower_80"] = frame["predicted_close"] - half
            frame["upper_80"] = frame["predicted_close"] + half
            frame["lower_95"] = frame["predicted_close"] - 2.0
            frame["upper_95"] = frame["predicted_close"] + 2.0
        else:
            frame[["lower_80", "upper_80", "lower_95", "upper_95"]] = np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _bands(axes: Axes) -> list[str]:
    return [str(c.get_label()) for c in axes.collections if isinstance(c, PolyCollection)]


def test_plot_predictions_is_a_fan_chart_of_the_last_sessions() -> None:
    """The last 60 test sessions: actual, predicted and naive lines over 80% and 95% bands."""
    figure = plot_predictions(_test_predictions(100), "BBB")
    [axes] = figure.axes
    assert [line.get_label() for line in axes.lines] == ["actual", "predicted", "naive"]
    np.testing.assert_allclose(axes.lines[0].get_ydata(), np.arange(40.0, 100.0) + 151)
    assert _bands(axes) == ["95% interval", "80% interval"]
    light, dark = [c for c in axes.collections if isinstance(c, PolyCollection)]
    assert light.get_alpha() < dark.get_alpha()  # the 95% band is the lighter one
    # the title speaks in the units of the run's metrics, over the whole test span
    relative = 0.5 / (np.arange(100.0) + 150)
    rmse, naive = np.sqrt(np.mean(relative**2)), np.sqrt(np.mean((2 * relative) ** 2))
    assert axes.get_title() == (
        f"BBB: coverage 80% 50% · 95% 100% · RMSE {rmse:.2%} of close vs naive {naive:.2%}"
    )
    assert axes.get_ylabel() == "close"
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_predictions_of_a_short_span_or_a_model_without_intervals() -> None:
    """Three windows still plot with their bands; NaN bounds plot the lines and no band."""
    figure = plot_predictions(_test_predictions(3), "AAA")
    [axes] = figure.axes
    assert len(axes.lines[0].get_ydata()) == 3
    assert _bands(axes) == ["95% interval", "80% interval"]
    figure.savefig(io.BytesIO(), format="png")

    figure = plot_predictions(_test_predictions(5, intervals=False), "AAA")
    [axes] = figure.axes
    assert [line.get_label() for line in axes.lines] == ["actual", "predicted", "naive"]
    assert _bands(axes) == []
    assert axes.get_title().startswith("AAA: RMSE ")  # no coverage to speak of
    figure.savefig(io.BytesIO(), format="png")


def test_plot_predictions_marks_the_closes_outside_the_95_band() -> None:
    """A close outside its 95% interval gets a red marker; the others none."""
    predictions = _test_predictions(10)
    miss = predictions.index[(predictions["ticker"] == "AAA")][4]
    predictions.loc[miss, ["lower_95", "upper_95"]] = [90.0, 100.0]  # its close is 105
    [axes] = plot_predictions(predictions, "AAA").axes
    [marks] = [c for c in axes.collections if c.get_label() == "outside 95%"]
    assert marks.get_offsets()[:, 1].tolist() == [105.0]


@pytest.mark.parametrize(
    ("ticker", "name"),
    [("AAPL", "AAPL"), ("^GSPC", "_GSPC"), ("BRK.B", "BRK.B"), ("../x", ".._x")],
)
def test_plot_name_is_a_safe_artifact_path(ticker: str, name: str) -> None:
    """A ticker's plot lands in plots/ whatever characters the symbol has."""
    assert plot_name(ticker) == f"plots/predicted_vs_actual_{name}.png"


def test_prices_table_is_long_and_its_digest_covers_every_row() -> None:
    """The training data is one long table; changing any row, even past 10,000, changes its digest."""
    index = pd.date_range("2000-01-03", periods=6000, freq="D", name="date")
    frames = {
        t: pd.DataFrame({"close": np.linspace(1, 2, 6000), "volume": 1.0}, index=index)
        for t in ("BBB", "AAA")
    }
    table = prices_table(frames)
    assert list(table.columns) == ["ticker", "date", "close", "volume"]
    assert len(table) == 12_000 and table["ticker"].iloc[0] == "AAA"
    changed = table.copy()
    changed.loc[11_999, "close"] += 0.01
    assert table_digest(table) == table_digest(table.copy())
    assert table_digest(changed) != table_digest(table)
    assert len(table_digest(table)) <= 36
    # MLflow's default digest looks at the first 10,000 rows only: why closecast computes its own
    assert compute_pandas_digest(changed) == compute_pandas_digest(table)


def test_flatten_params_dots_nested_keys_and_joins_lists() -> None:
    """Nested config becomes dotted params; lists become comma-separated strings."""
    assert flatten_params({"train": {"epochs": 2}, "features": ["close", "open"], "x": None}) == {
        "train.epochs": "2",
        "features": "close,open",
        "x": "None",
    }


def test_artifact_location_is_local_only_for_sqlite(tmp_path: Path) -> None:
    """SQLite stores keep artifacts under <home>/mlartifacts; a server picks its own root."""
    local = PipelineConfig(home=tmp_path)
    assert artifact_location(local) == (tmp_path / "mlartifacts").absolute().as_uri()
    remote = PipelineConfig(home=tmp_path, tracking_uri="http://127.0.0.1:5000")
    assert artifact_location(remote) is None


@pytest.mark.parametrize(
    ("uri", "error", "says"),
    [
        ("http://127.0.0.1:9", MlflowException(REFUSED), "after 7 retries: Connection refused"),
        ("http://h:1", MlflowException("API request ... Read timed out."), "retries: no answer"),
        ("sqlite:////x/mlflow.db", OSError("unable to open database file"), ": unable to open"),
    ],
)
def test_unreachable_is_one_line_naming_the_uri(uri: str, error: Exception, says: str) -> None:
    """The error keeps the URI and the cause, without urllib3's page of detail."""
    message = str(unreachable(uri, error))
    assert message.startswith(f"MLflow at {uri} cannot be reached")
    assert says in message and "\n" not in message and len(message) < 200


def test_connect_mlflow_gives_up_after_the_configured_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody listening: a PipelineError naming the URI, after MLFLOW_HTTP_REQUEST_MAX_RETRIES."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        PipelineError, match=r"cannot be reached after 0 retries: Connection refused"
    ):
        connect_mlflow(uri)


def test_connect_mlflow_reports_a_refused_connection_without_mlflows_retries(
    monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    """Nobody listening, MLflow's retry settings left alone: one line after 4 tries of the
    port (one, then one after each wait), and not one of MLflow's own retries."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy would leave it to MLflow
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(PipelineError) as raised:
        connect_mlflow(uri)
    assert connections.count(("127.0.0.1", port)) == 4
    assert re.fullmatch(
        rf"MLflow at {re.escape(uri)} cannot be reached after \d+ retries: Connection refused",
        str(raised.value),
    )


def test_connect_mlflow_keeps_mlflow_retries_for_a_server_that_accepts_but_is_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port that accepts connections is left to MLflow's own (bounded) retries."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy would leave it to MLflow
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with socket.socket() as silent:  # listens, never answers: connections wait in the backlog
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(PipelineError, match=r"cannot be reached after 7 retries: no answer"):
            connect_mlflow(uri)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_tracking_run_marks_the_runs_of_dead_processes_killed(mlflow_home: Path) -> None:
    """RUNNING runs whose process on this host is gone become KILLED, with the reason;
    live processes, other hosts, untagged runs and runs open in this process stay RUNNING."""
    config = PipelineConfig(home=mlflow_home)
    client = configure_mlflow(config.mlflow_uri)
    experiment_id = ensure_experiment(client, config.experiment, artifact_location(config))
    host = socket.gethostname()

    def running(pid: int | None, on: str = host) -> str:
        tags = {} if pid is None else {"closecast.pid": str(pid), "closecast.host": on}
        return client.create_run(experiment_id, tags=tags).info.run_id

    dead_pid = _dead_pid()
    dead = running(dead_pid)
    same_pid_earlier = running(os.getpid())  # a previous process that had this pid (a container)
    alive = running(os.getppid())
    elsewhere = running(dead_pid, on="another-host")
    untagged = running(None)
    with tracking_run(config, "outer", {}) as outer, tracking_run(config, "inner", {}) as inner:
        assert client.get_run(outer).info.status == "RUNNING"  # open here, not killed by inner

    for run_id, pid in ((dead, dead_pid), (same_pid_earlier, os.getpid())):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        reason = run.data.tags["closecast.killed_reason"]
        assert outer in reason and f"process {pid} on {host}" in reason
        assert run.data.tags["mlflow.note.content"] == reason
    for run_id in (alive, elsewhere, untagged):
        assert client.get_run(run_id).info.status == "RUNNING"
    for run_id in (outer, inner):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["closecast.pid"] == str(os.getpid())
        assert run.data.tags["closecast.host"] == host
