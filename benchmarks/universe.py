"""The S&P 500 universe benchmark: `closecast run` on all 505 tickers of ../shared/data.

Runs the real command line in a subprocess with default model settings, on a
fresh home and a fresh Prefect home, and records:

- wall time of the whole command;
- per-step times, read back from the Prefect API (each task run's start and
  end): per step, the summed run time and the span from the first start to
  the last end (the two differ when a step is mapped and runs concurrently);
- peak memory: the largest single process (getrusage of the children) and the
  whole process tree (psutil, sampled every 0.2 s);
- the MLflow run's training metrics.

Writes benchmarks/results/universe.json and prints a table.

    python benchmarks/universe.py                      # defaults, 2 cores: target < 10 min, < 4 GB
    python benchmarks/universe.py -- --epochs 2        # extra args go to `closecast run`
"""

import argparse
import contextlib
import csv
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
_SHARED_FILE = Path("shared") / "data" / "sp500_5yr" / "all_stocks_5yr.csv.gz"
# ../shared/data beside the repository, also from a git worktree nested deeper
DATA = next(
    (p / _SHARED_FILE for p in ROOT.parents if (p / _SHARED_FILE).is_file()),
    ROOT.parent / _SHARED_FILE,
)
RESULTS = ROOT / "benchmarks" / "results" / "universe.json"
TARGET_S, TARGET_MB = 600.0, 4096.0


class TreeMemory(threading.Thread):
    """Samples the summed RSS of a process and all its descendants."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss = 0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        rss += proc.memory_info().rss
                self.peak = max(self.peak, rss)
            except psutil.Error:
                return
            self.done.wait(self.every_s)


def step_name(task_run_name: str) -> str:
    """`validate-prices AAPL` -> validate-prices; `load-prices-3fa` -> load-prices."""
    name = task_run_name.split(" ")[0]
    return re.sub(r"-[0-9a-f]{3}$", "", name)


def step_times(prefect_home: Path) -> dict[str, dict[str, float]]:
    """Per step: task runs, summed seconds, and span seconds, from the Prefect API."""
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    from prefect import get_client

    runs = []
    with get_client(sync_client=True) as client:
        while batch := client.read_task_runs(limit=200, offset=len(runs)):
            runs += batch
    steps: dict[str, dict[str, float]] = {}
    spans: dict[str, tuple[datetime, datetime]] = {}
    for run in runs:
        if run.start_time is None or run.end_time is None:
            continue
        name = step_name(run.name)
        step = steps.setdefault(name, {"task_runs": 0, "sum_s": 0.0, "span_s": 0.0})
        step["task_runs"] += 1
        step["sum_s"] += run.total_run_time.total_seconds()
        first, last = spans.get(name, (run.start_time, run.end_time))
        spans[name] = (min(first, run.start_time), max(last, run.end_time))
    for name, (first, last) in spans.items():
        steps[name]["span_s"] = (last - first).total_seconds()
    return dict(sorted(steps.items(), key=lambda kv: -kv[1]["span_s"]))


def training_metrics(home: Path, output: str) -> dict[str, float]:
    """epochs_trained, train_seconds, skill, ... of the run the command printed."""
    match = re.search(r"mlflow run: (\w+)", output)
    if not match:
        return {}
    from mlflow import MlflowClient

    metrics = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(match.group(1)).data.metrics
    keep = ("epochs_trained", "train_seconds", "skill", "test_rmse", "naive_rmse", "rows_dropped")
    return {k: metrics[k] for k in keep if k in metrics}


def git_head() -> str:
    """`<commit> (parents ...) <subject>` of the code that ran."""
    try:
        return subprocess.run(
            ["git", "log", "-1", "--format=%h (parents %p) %s"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--log", type=Path, help="also write the command's output here")
    parser.add_argument("extra", nargs="*", help="arguments for `closecast run`, after --")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"universe data not found: {args.data}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="closecast-universe-") as tmp:
        home, prefect_home = Path(tmp) / "home", Path(tmp) / "prefect"
        command = [sys.executable, "-m", "closecast.cli", "run", "--source", f"csv:{args.data}"]
        command += ["--home", str(home), *args.extra]
        env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env.pop("PREFECT_API_URL", None)
        load_before = os.getloadavg()
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        sampler = TreeMemory(process.pid)
        sampler.start()
        output, _ = process.communicate()
        wall_s = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        load_after = os.getloadavg()
        if args.log:
            args.log.write_text(output)
        peak_process_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if process.returncode != 0:
            print(output[-3000:], file=sys.stderr)
            print(f"closecast run exited {process.returncode}", file=sys.stderr)
            return 1
        steps = step_times(prefect_home)
        training = training_metrics(home, output)
        report = next(home.glob("reports/predictions_*.csv"))
        with report.open(newline="") as rows:  # by column name: columns are only ever added
            statuses = dict(Counter(row["status"] for row in csv.DictReader(rows)))

    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": git_head(),
        "command": " ".join(["closecast", *command[3:]]).replace(tmp, "$TMP"),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "wall_s": round(wall_s, 1),
        "peak_process_mb": round(peak_process_mb, 1),
        "peak_tree_mb": round(sampler.peak / 2**20, 1),
        "targets": {"wall_s": TARGET_S, "peak_mb": TARGET_MB},
        "steps": {k: {m: round(v, 2) for m, v in s.items()} for k, s in steps.items()},
        "training": training,
        "report_statuses": statuses,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'step':<22}{'task runs':>10}{'sum s':>10}{'span s':>10}")
    for name, step in result["steps"].items():
        print(f"{name:<22}{step['task_runs']:>10.0f}{step['sum_s']:>10.1f}{step['span_s']:>10.1f}")
    print(
        f"wall {wall_s:.1f}s (target {TARGET_S:.0f}s); peak memory {peak_process_mb:.0f} MB "
        f"largest process, {result['peak_tree_mb']:.0f} MB process tree (target {TARGET_MB:.0f})"
    )
    print(f"training: {training}; report: {statuses}")
    print(f"load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
