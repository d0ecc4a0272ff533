import logging
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from closecast.cli.app import main
from closecast.core.errors import InputError, PipelineError
from tests.fixtures import read_report, write_ticker_csvs


@pytest.mark.usefixtures("prefect_harness")
def test_run_exits_0_and_prints_where_things_are(
    tmp_path: Path, csv_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A good run exits 0 and prints the report path, run id, version and skill."""
    home = tmp_path / "home"
    code = main(
        ["run", "--source", f"csv:{csv_folder}", "--tickers", "AAA,BBB", "--home", str(home),
         "--epochs", "2", "--hidden", "8", "--as-of", "2021-01-09"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "report:" in out and "mlflow run:" in out and "skill vs naive:" in out
    report = read_report(home / "reports" / "predictions_2021-01-08.csv")  # Saturday -> Friday
    assert set(report["as_of"]) == {"2021-01-08"}
    assert set(report["target_date"]) == {"2021-01-11"}


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["run", "--tickers", "../../x", "--source", "sample"], "'../../x'"),
        (["run", "--tickers", "AAPL", "--source", "sample", "--as-of", "2024-13-01"], "2024-13-01"),
        (["run", "--source", "csv:/nonexistent/prices"], "/nonexistent/prices"),
        (["run", "--tickers-file", "/nonexistent/list.txt", "--source", "sample"], "list.txt"),
        (["run", "--source", "ftp"], "'ftp'"),
        (["run", "--bogus-flag"], "--bogus-flag"),
        (["run", "--source", "sample", "--epochs", "0"], "0"),
        (["run", "--source", "sample", "--features", "volume"], "close"),
        (["run"], "--tickers"),
        (["run", "--source", "sample", "--hidden", "0"], "--hidden 0"),
        (["run", "--source", "sample", "--dropout", "1.5"], "--dropout 1.5"),
        (["run", "--source", "sample", "--tickers", ""], "no tickers given"),
        (["fetch", "--source", "sample", "--tickers", " , "], "no tickers given"),
        (["run", "--source", "yfinance", "--tickers", ""], "no tickers given"),
        (["run", "--source", "sample", "--promotion-alpha", "1.5"], "--promotion-alpha 1.5"),
        (["run", "--source", "sample", "--promotion-alpha", "0"], "--promotion-alpha 0.0"),
        (["backfill", "--source", "sample", "--start", "2018-11-01", "--end", "2018-11-02",
          "--register", "--promotion-alpha", "-0.1"], "--promotion-alpha -0.1"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(
    tmp_path: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad usage or input: exit 2, one line naming the bad value, nothing created."""
    home = tmp_path / "home"
    assert main([*args, "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err
    assert "Traceback" not in err
    assert not home.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_every_fetch_failing_exits_1_and_keeps_reports(
    tmp_path: Path, csv_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """When no ticker can be fetched the run fails with exit 1 and writes no report."""
    home = tmp_path / "home"
    code = main(
        ["run", "--source", f"csv:{csv_folder}", "--tickers", "NOPE,NADA", "--home", str(home)]
    )
    assert code == 1
    assert "every fetch failed" in capsys.readouterr().err
    assert not (home / "reports").exists()


@pytest.mark.parametrize(
    ("error", "keeps_traceback"),
    [
        (PipelineError("every fetch failed"), False),
        (InputError("bad"), False),
        (KeyError("x"), True),
    ],
)
def test_flow_logs_carry_no_traceback_for_expected_errors(
    error: Exception, keeps_traceback: bool
) -> None:
    """Prefect's flow-run logger drops the traceback of expected errors, keeps others'."""
    main(["--help"])
    logger = logging.getLogger("prefect.flow_runs")
    record = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, "failed", (), (type(error), error, None)
    )
    assert all(f.filter(record) for f in logger.filters)
    assert (record.exc_info is not None) == keeps_traceback


@pytest.mark.parametrize("command", ["run", "fetch", "predict"])
def test_an_empty_tickers_file_is_bad_input_not_everything(
    tmp_path: Path, csv_folder: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tickers file with only comments and blank lines exits 2; it never means every ticker."""
    listed = tmp_path / "universe.txt"
    listed.write_text("# nothing yet\n\n")
    home = tmp_path / "home"
    args = [command, "--source", f"csv:{csv_folder}", "--tickers-file", str(listed)]
    assert main([*args, "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"closecast: error: no tickers given: --tickers-file {listed} lists none"
    assert not home.exists()


@pytest.mark.parametrize("under", ["", "sub"])
def test_home_that_is_a_file_exits_2_and_leaves_the_file(
    tmp_path: Path, under: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--home naming a file (or a path under one) exits 2 in one line; the file is untouched."""
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    home = afile / under if under else afile
    for command in (["run", "--source", "sample"], ["fetch", "--source", "sample"], ["models"]):
        assert main([*command, "--home", str(home)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{home}'" in err and "is a file" in err, err
    assert afile.read_text() == "keep me"


@pytest.mark.parametrize(
    ("command", "folder"),
    [
        (["run", "--source", "sample"], "reports"),
        (["run", "--source", "sample"], "prices"),
        (["run", "--source", "sample"], "mlartifacts"),
        (["predict", "--source", "sample"], "reports"),
        (["backfill", "--start", "2018-12-03", "--end", "2018-12-04", "--source", "sample"],
         "reports"),
        (["fetch", "--source", "sample"], "prices"),
    ],
)  # fmt: skip
def test_a_home_folder_that_is_a_file_exits_2_before_anything_runs(
    tmp_path: Path, command: list[str], folder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reports` (or `prices`, `mlartifacts`) that is a file: exit 2 in one line naming it,
    before anything is fetched, trained or registered; the file is untouched."""
    home = tmp_path / "home"
    home.mkdir()
    (home / folder).write_text("keep me")
    assert main([*command, "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"'{home / folder}' is a file, not a folder" in err, err
    assert [p.name for p in home.iterdir()] == [folder]  # no store, no mlflow.db
    assert (home / folder).read_text() == "keep me"


def test_sqlite_tracking_uri_under_a_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """MLFLOW_TRACKING_URI=sqlite:///FILE/mlflow.db is refused before anything runs."""
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{afile}/mlflow.db")
    home = tmp_path / "home"
    assert main(["run", "--source", "sample", "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"closecast: error: tracking URI 'sqlite:///{afile}/mlflow.db': {afile} is a file, "
        "not a folder"
    )
    assert not home.exists()


@pytest.mark.usefixtures("prefect_harness")
def test_every_ticker_too_short_exits_1_in_one_line_without_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Valid input that cannot train a model: exit 1, one line, no traceback from any logger."""
    folder = write_ticker_csvs(tmp_path / "csv", {"AAA": 8, "BBB": 6})
    home = tmp_path / "home"
    args = ["run", "--source", f"csv:{folder}", "--tickers", "AAA,BBB", "--home", str(home)]
    # Inputs without a lookback, so the rows counted are the file's: the default features
    # drop 65 warm-up rows first (models/derived.py), and the message would say 0 rows.
    args += ["--features", "close,volume,open"]
    assert main([*args, "--epochs", "1", "--hidden", "8"]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last == (
        "closecast: pipeline failed: no ticker can be trained: the longest valid history is "
        "8 rows; a window of 10 days and its next close need 11"
    )
    assert not (home / "reports").exists() and not (home / "mlflow.db").exists()


RUN = ["run", "--source", "sample"]
BACKFILL = ["backfill", "--start", "2021-03-01", "--end", "2021-03-05", "--source", "sample"]


@pytest.mark.parametrize("command", [RUN, BACKFILL], ids=["run", "backfill"])
@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--window", "1", "--window 1"),
        ("--features", "close,price", "--features 'price'"),
        ("--target", "bogus", "--target 'bogus'"),
        ("--hidden", "0", "--hidden 0"),
        ("--dropout", "1.5", "--dropout 1.5"),
        ("--epochs", "0", "--epochs 0"),
        ("--batch-size", "0", "--batch-size 0"),
        ("--learning-rate", "2", "--learning-rate 2.0"),
        ("--patience", "0", "--patience 0"),
        ("--epoch-windows", "5", "--epoch-windows 5"),
        ("--seed", "x", "'--seed'"),
        ("--device", "gpu", "--device 'gpu'"),
    ],
)
def test_run_and_backfill_check_every_model_option_alike(
    tmp_path: Path,
    command: list[str],
    flag: str,
    value: str,
    named: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run and backfill take every model and training option; an out-of-range value exits 2
    in one line naming the flag and the value, before anything is made."""
    home = tmp_path / "home"
    assert main([*command, flag, value, "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err, err
    assert not home.exists()


def test_run_and_backfill_default_to_the_models_settings() -> None:
    """Unset, every model and training option of run and backfill is the product default:
    the reference design's, but for the inputs and the head (closecast.core.config)."""
    import typer

    from closecast.cli.app import app
    from closecast.core.config import DEFAULT_DISTRIBUTION, DEFAULT_FEATURES

    expected = {
        "--window": 10, "--features": ",".join(DEFAULT_FEATURES), "--target": "vol_return",
        "--hidden": 32, "--dropout": 0.2, "--distribution": DEFAULT_DISTRIBUTION,
        "--epochs": 50, "--batch-size": 32, "--learning-rate": 0.001, "--patience": 5,
        "--seed": 42, "--device": "auto", "--epoch-windows": 2**19, "--full-retrain": False,
    }  # fmt: skip
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in ("run", "backfill"):
        defaults = {opt: p.default for p in commands[name].params for opt in p.opts}
        assert {flag: defaults.get(flag) for flag in expected} == expected, name


def test_each_commands_host_help_says_what_that_command_binds() -> None:
    """--host of run, predict and backfill is about their Dask dashboards (their Prefect API
    stays on 127.0.0.1); serve's is about its Prefect server too."""
    import typer

    from closecast.cli.app import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    helps = {
        name: next(p.help for p in commands[name].params if "--host" in p.opts)
        for name in ("run", "predict", "backfill", "serve")
    }
    for name in ("run", "predict", "backfill"):
        assert "Dask" in helps[name] and "Prefect" not in helps[name], helps[name]
    assert "serve's Prefect server" in helps["serve"] and "Dask" in helps["serve"]


_PROGRAM = """
import atexit, sys, threading, time
from pathlib import Path
from closecast.cli.app import main

out = Path(sys.argv[1])

class Teardown:
    def __del__(self):
        (out / "torn_down").write_text("modules freed one by one")

left_for_teardown = Teardown()
atexit.register(lambda: (out / "atexit").write_text("ran"))
threading.Thread(
    target=lambda: (time.sleep(0.3), (out / "thread").write_text("joined"))
).start()
print("printed, not flushed", end="")
sys.argv = ["closecast", *sys.argv[2:]]
main()
"""


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize(("args", "code"), [(["--help"], 0), (["run", "--bogus-flag"], 2)])
def test_the_program_ends_without_freeing_each_module(
    tmp_path: Path, args: list[str], code: int
) -> None:
    """As a program it exits with its code after threads, atexit and output, skipping teardown."""
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, str(tmp_path), *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == code, done.stderr
    assert "printed, not flushed" in done.stdout
    assert (tmp_path / "thread").read_text() == "joined"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "torn_down").exists()


_USAGE = """
import subprocess, sys
started = []
popen = subprocess.Popen.__init__
subprocess.Popen.__init__ = lambda self, args, *a, **k: (started.append(args), popen(self, args, *a, **k))[1]
from closecast.cli.app import run_command
code = run_command(sys.argv[1:])
heavy = sorted(m for m in ("prefect", "mlflow", "torch", "pandas") if m in sys.modules)
print(code, ",".join(heavy) or "-", len(started))
"""


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize(
    ("args", "code", "err"),
    [
        (["--version"], 0, ""),
        (["run", "--bogus-flag"], 2, "closecast: error: No such option: --bogus-flag"),
        (["fetch", "--epochs", "2"], 2, "closecast: error: No such option: --epochs"),
        (["run", "--epochs", "x"], 2, "closecast: error: Invalid value for '--epochs'"),
        (["backfill", "--end", "2021-03-05"], 2, "closecast: error: Missing option '--start'"),
        (["predcit"], 2, "closecast: error: No such command 'predcit'"),
        (
            ["serve", "--notify-url", "ftp://alerts"],
            2,
            "closecast: error: invalid --notify-url 'ftp://alerts': expected http:// or https://",
        ),
    ],
)
def test_usage_errors_and_the_version_need_no_prefect(args: list[str], code: int, err: str) -> None:
    """The command line is parsed before anything starts: a usage error exits 2 in one line,
    and --version prints the package's version, without importing Prefect, MLflow, torch or
    pandas and without starting a temporary Prefect API."""
    done = subprocess.run(
        [sys.executable, "-c", _USAGE, *args],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    *printed, result = done.stdout.strip().splitlines()
    assert result == f"{code} - 0", done.stderr
    assert done.stderr.strip().startswith(err) and len(done.stderr.strip().splitlines()) <= 1
    if args == ["--version"]:
        assert printed == [f"closecast {metadata.version('closecast')}"]


def test_full_retrain_lifts_the_epoch_budget(tmp_path: Path) -> None:
    """--full-retrain trains on every window (no budget); --epoch-windows sets the budget."""
    from closecast.cli.options import DataOptions, build_config

    data = DataOptions(source="sample")
    assert build_config(tmp_path, data).train.epoch_windows == 2**19
    full = build_config(tmp_path, data, model={"full_retrain": True})
    assert full.train.epoch_windows is None
    budget = build_config(tmp_path, data, model={"epoch_windows": "4096", "full_retrain": False})
    assert budget.train.epoch_windows == 4096


def test_promotion_alpha_reaches_the_gates_config(tmp_path: Path) -> None:
    """--promotion-alpha sets the config's field and the registry config the gate reads;
    left out, it is off."""
    from closecast.cli.options import DataOptions, build_config

    data = DataOptions(source="sample")
    config = build_config(tmp_path / "home", data, promotion_alpha=0.05)
    assert (config.promotion_alpha, config.registry.promotion_alpha) == (0.05, 0.05)
    assert build_config(tmp_path / "home", data).registry.promotion_alpha is None
