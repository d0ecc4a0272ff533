import logging
from pathlib import Path

import pytest

from closecast.cli import main
from closecast.errors import InputError, PipelineError
from tests.conftest import read_report


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
    ],
)
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
