"""The S&P 500 universe benchmark: `closecast run` on all 505 tickers of ../shared/data.

Runs the real command line in a subprocess with default model settings, on a
fresh home and a fresh Prefect home, and records:

- wall time of the whole command;
- per-step times, read back from the Prefect API (each task run's start and
  end): per step, the summed run time and the span from the first start to
  the last end (the two differ when a step is mapped and runs concurrently);
- peak memory: the largest single process (getrusage of the children) and the
  whole process tree (psutil, sampled every 0.2 s), and per step the command's
  own largest sampled RSS during the step's span;
- the MLflow run's training metrics;
- where the wall time goes: the command's start-up until it spawns the
  temporary Prefect server, the server's start (spawn to its health endpoint
  answering, watched with psutil), the rest of the start-up until the flow
  run starts (imports, set-up), each step's span, the flow's time outside
  any step, and the time after the flow ends (report, log drain, server
  stop); and, measured alone before the run, the import floor
  (`import torch, mlflow, prefect, pandas`).

Writes benchmarks/results/universe.json and prints a table.

    python benchmarks/universe.py                      # defaults, 2 cores: target < 60 s, < 2 GB
    python benchmarks/universe.py -- --epochs 2        # extra args go to `closecast run`
    python benchmarks/universe.py --root /tmp/base     # the code of another checkout
    python benchmarks/universe.py --copies 1 4 20      # 505, 2,020 and 10,100 tickers

With `--copies K` the run reads a K× universe built from the shared file
(`copy_universe`): every series repeated K times, each copy's prices scaled by
one random factor (seeded, so every run builds the same file; volume is
kept), and its tickers renamed (AAL, AAL-X2, ..., AAL-XK): the dynamics are
real, only the universe grows. Several K run one after the other and the
growth table (wall, peak memory and each step, against K = the smallest) is
printed and written to benchmarks/results/universe_growth.json.
"""

import argparse
import contextlib
import csv
import gzip
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
_SHARED_FILE = Path("shared") / "data" / "sp500_5yr" / "all_stocks_5yr.csv.gz"
# ../shared/data beside the repository, also from a git worktree nested deeper
DATA = next(
    (p / _SHARED_FILE for p in ROOT.parents if (p / _SHARED_FILE).is_file()),
    ROOT.parent / _SHARED_FILE,
)
RESULTS = ROOT / "benchmarks" / "results" / "universe.json"
GROWTH = ROOT / "benchmarks" / "results" / "universe_growth.json"
PRICE_COLUMNS = ["open", "high", "low", "close"]
TARGET_S, TARGET_MB = 60.0, 2048.0  # issue 14 (PRODUCT.md §9 first asked 600 s and 4 GB)


class TreeMemory(threading.Thread):
    """Samples the summed RSS of a process and all its descendants, and the process's own."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self.samples: list[tuple[float, int]] = []  # (epoch seconds, RSS of the command itself)
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
                self.samples.append((time.time(), self.root.memory_info().rss))
            except psutil.Error:
                return
            self.done.wait(self.every_s)

    def peak_during(self, begin: float, end: float) -> float:
        """The command's largest sampled RSS between two epoch times, MB (0: no sample)."""
        inside = [rss for when, rss in self.samples if begin <= when <= end]
        return max(inside, default=0) / 2**20


class ServerWatch(threading.Thread):
    """When the command spawns its temporary Prefect server, and when that server answers."""

    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root, self.every_s = psutil.Process(pid), every_s
        self.launched = time.time()  # ~ when the command started: right after Popen
        self.spawned: float | None = None  # epoch seconds
        self.ready: float | None = None
        self.done = threading.Event()

    def _server(self) -> psutil.Process | None:
        for child in self.root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "prefect_api" in " ".join(child.cmdline()):
                    return child
        return None

    def run(self) -> None:
        server, port = None, None
        while not self.done.is_set() and self.ready is None:
            try:
                server = server or self._server()
                if server is not None and self.spawned is None:
                    # psutil's process start times share one basis (boot time + ticks), which
                    # may be off time.time() by a fraction of a second: keep only the offset.
                    offset = server.create_time() - self.root.create_time()
                    self.spawned = self.launched + offset
                if server is not None and port is None:
                    listening = [c for c in server.net_connections("tcp") if c.status == "LISTEN"]
                    port = listening[0].laddr.port if listening else None
                if port is not None:
                    url = f"http://127.0.0.1:{port}/api/health"
                    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                        self.ready = time.time()
            except psutil.Error:
                return
            self.done.wait(self.every_s)


def import_floor(python: str) -> float:
    """Seconds to import torch, mlflow, prefect and pandas in a fresh interpreter."""
    started = time.perf_counter()
    subprocess.run([python, "-c", "import torch, mlflow, prefect, pandas"], check=True)
    return time.perf_counter() - started


def timeline(
    started: float,
    ended: float,
    server: ServerWatch,
    flow: tuple[float, float] | None,
    spans: list[tuple[float, float]],
    steps: dict[str, dict[str, float]],
) -> dict[str, float]:
    """Where the wall time went, in seconds (epoch seconds in, durations out)."""
    out: dict[str, float] = {}
    if flow is None:
        return out
    flow_start, flow_end = flow
    if server.spawned is not None:
        out["start-up until the server is spawned (interpreter, CLI imports)"] = (
            server.spawned - started
        )
        if server.ready is not None:
            out["  server start (spawned -> answering; in parallel)"] = (
                server.ready - server.spawned
            )
        out["start-up after the spawn until the flow starts (imports, set-up)"] = (
            flow_start - server.spawned
        )
    else:
        out["start-up until the flow starts"] = flow_start - started
    for name, step in steps.items():
        out[f"step {name}"] = step["span_s"]
    covered, last = 0.0, flow_start
    for begin, end in sorted(spans):  # the union of the step spans inside the flow
        begin, end = max(begin, last), min(end, flow_end)
        if end > begin:
            covered += end - begin
            last = end
    out["flow time outside any step (orchestration)"] = (flow_end - flow_start) - covered
    out["after the flow ends (report, log drain, server stop, exit)"] = ended - flow_end
    out["wall"] = ended - started
    return out


def step_name(task_run_name: str) -> str:
    """`validate-prices AAPL` -> validate-prices; `load-prices-3fa` -> load-prices."""
    name = task_run_name.split(" ")[0]
    return re.sub(r"-[0-9a-f]{3}$", "", name)


RunTimes = tuple[
    dict[str, dict[str, float]],
    tuple[float, float] | None,
    list[tuple[float, float]],
    dict[str, tuple[float, float]],
]


def step_times(prefect_home: Path) -> RunTimes:
    """Per step: task runs, summed seconds, and span seconds, from the Prefect API; and the
    top-level flow run's (start, end) and every task run's (start, end), epoch seconds."""
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    from prefect import get_client

    runs = []
    with get_client(sync_client=True) as client:
        while batch := client.read_task_runs(limit=200, offset=len(runs)):
            runs += batch
        flows = client.read_flow_runs()
    top = [f for f in flows if f.parent_task_run_id is None and f.start_time and f.end_time]
    flow = (top[0].start_time.timestamp(), top[0].end_time.timestamp()) if top else None
    intervals = [
        (r.start_time.timestamp(), r.end_time.timestamp())
        for r in runs
        if r.start_time is not None and r.end_time is not None
    ]
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
    ordered = dict(sorted(steps.items(), key=lambda kv: -kv[1]["span_s"]))
    epochs = {k: (first.timestamp(), last.timestamp()) for k, (first, last) in spans.items()}
    return ordered, flow, intervals, epochs


def training_metrics(home: Path, output: str) -> dict[str, float]:
    """epochs_trained, train_seconds, skill, ... of the run the command printed."""
    match = re.search(r"mlflow run: (\w+)", output)
    if not match:
        return {}
    from mlflow import MlflowClient

    metrics = MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(match.group(1)).data.metrics
    keep = ("epochs_trained", "train_seconds", "skill", "test_rmse", "naive_rmse", "rows_dropped")
    return {k: metrics[k] for k in keep if k in metrics}


def git_head(root: Path) -> str:
    """`<commit> (parents ...) <subject>` of the code that ran."""
    try:
        return subprocess.run(
            ["git", "log", "-1", "--format=%h (parents %p) %s"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def copy_universe(source: Path, copies: int, target: Path, seed: int = 22) -> int:
    """Write a `copies`× universe of the shared file to `target` (csv.gz); returns its tickers.

    Copy 1 is the file itself; copy k ≥ 2 multiplies every ticker's prices by
    one factor drawn log-uniformly from [0.2, 5] (returns, ranges and gaps are
    unchanged) and renames it TICKER-Xk.
    """
    frame = pd.read_csv(source)
    tickers = frame["Name"].unique()
    rng = np.random.default_rng(seed)
    with gzip.open(target, "wt", compresslevel=1, newline="") as out:
        frame.to_csv(out, index=False, float_format="%.6g")  # copy 1: the file itself
        for copy in range(2, copies + 1):
            factors = np.exp(rng.uniform(np.log(0.2), np.log(5), len(tickers)))  # per ticker
            part = frame.copy()
            scale = part["Name"].map(dict(zip(tickers, factors, strict=True)))
            part[PRICE_COLUMNS] = part[PRICE_COLUMNS].mul(scale, axis=0)
            part["Name"] = part["Name"] + f"-X{copy}"
            part.to_csv(out, index=False, header=False, float_format="%.6g")
    return len(tickers) * copies


def growth_table(results: list[dict]) -> list[dict]:
    """Per universe: tickers, wall, peak tree memory and each step's span, and each against the
    smallest universe's (x: the ratio; the tickers' ratio is the linear bound)."""
    base = results[0]
    rows = []
    for result in results:
        row = {
            "copies": result["copies"],
            "tickers": result["tickers"],
            "tickers_x": round(result["tickers"] / base["tickers"], 2),
            "wall_s": result["wall_s"],
            "wall_x": round(result["wall_s"] / base["wall_s"], 2),
            "peak_tree_mb": result["peak_tree_mb"],
            "peak_tree_x": round(result["peak_tree_mb"] / base["peak_tree_mb"], 2),
            "step_span_s": {k: v["span_s"] for k, v in result["steps"].items()},
        }
        rows.append(row)
    return rows


def print_growth(rows: list[dict]) -> None:
    print(f"\n{'copies':>6}{'tickers':>9}{'x':>6}{'wall s':>9}{'x':>6}{'peak MB':>9}{'x':>6}")
    for row in rows:
        print(
            f"{row['copies']:>6}{row['tickers']:>9}{row['tickers_x']:>6.1f}{row['wall_s']:>9.1f}"
            f"{row['wall_x']:>6.2f}{row['peak_tree_mb']:>9.0f}{row['peak_tree_x']:>6.2f}"
        )
    steps = sorted({s for row in rows for s in row["step_span_s"]})
    print(f"\n{'step span s':<22}" + "".join(f"{'K=' + str(r['copies']):>10}" for r in rows))
    for step in steps:
        spans = "".join(f"{r['step_span_s'].get(step, float('nan')):>10.1f}" for r in rows)
        print(f"{step:<22}{spans}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--log", type=Path, help="also write the command's output here")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)"
    )
    parser.add_argument(
        "--copies",
        type=int,
        nargs="+",
        default=[1],
        metavar="K",
        help="universe sizes, in copies of the shared file (e.g. 1 4 20); default 1",
    )
    parser.add_argument("extra", nargs="*", help="arguments for `closecast run`, after --")
    args = parser.parse_args()
    if not args.data.is_file():
        print(f"universe data not found: {args.data}", file=sys.stderr)
        return 2
    bad = [k for k in args.copies if not 1 <= k <= 100]
    if bad:
        print(f"invalid --copies {bad[0]}: expected 1 to 100", file=sys.stderr)
        return 2
    sizes = sorted(set(args.copies))
    if len(sizes) == 1:
        output = result_file(args.output, sizes[0])
        return 0 if run_universe(args, sizes[0], output) is not None else 1
    # Several sizes: one child process each, since step_times reads the Prefect home that
    # PREFECT_HOME names when prefect is first imported (a second run would read the first's).
    results = []
    for copies in sizes:
        command = [sys.executable, __file__, "--data", str(args.data), "--root", str(args.root)]
        command += ["--output", str(args.output), "--copies", str(copies)]
        command += ["--log", str(args.log)] if args.log else []
        if subprocess.run([*command, "--", *args.extra], check=False).returncode != 0:
            return 1
        results.append(json.loads(result_file(args.output, copies).read_text()))
    rows = growth_table(results)
    GROWTH.write_text(json.dumps({"code": results[-1]["code"], "growth": rows}, indent=2) + "\n")
    print_growth(rows)
    print(f"growth table written to {GROWTH}")
    return 0


def result_file(output: Path, copies: int) -> Path:
    """Where one size's result goes: `output` for K = 1, universe_xK.json beside it otherwise."""
    return output if copies == 1 else output.with_name(f"universe_x{copies}.json")


def run_universe(args: argparse.Namespace, copies: int, result_path: Path) -> dict | None:
    """One `closecast run` on a `copies`× universe: its result (also written to `result_path`),
    None when the command failed."""
    with tempfile.TemporaryDirectory(prefix="closecast-universe-") as tmp:
        data, tickers = args.data, None
        if copies > 1:
            data = Path(tmp) / f"universe_x{copies}.csv.gz"
            tickers = copy_universe(args.data, copies, data)
        home, prefect_home = Path(tmp) / "home", Path(tmp) / "prefect"
        command = [sys.executable, "-m", "closecast.cli.app", "run", "--source", f"csv:{data}"]
        command += ["--home", str(home), *args.extra]
        env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env.pop("PREFECT_API_URL", None)
        floor_s = import_floor(sys.executable)
        load_before = os.getloadavg()
        started, started_epoch = time.perf_counter(), time.time()
        process = subprocess.Popen(
            command,
            cwd=args.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        sampler, server = TreeMemory(process.pid), ServerWatch(process.pid)
        server.launched = started_epoch
        sampler.start()
        server.start()
        output, _ = process.communicate()
        wall_s = time.perf_counter() - started
        ended_epoch = time.time()
        for thread in (sampler, server):
            thread.done.set()
            thread.join()
        load_after = os.getloadavg()
        if args.log:
            log = args.log if copies == 1 else args.log.with_name(f"{args.log.stem}_x{copies}.log")
            log.write_text(output)
        peak_process_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        if process.returncode != 0:
            print(output[-3000:], file=sys.stderr)
            print(f"closecast run exited {process.returncode}", file=sys.stderr)
            return None
        steps, flow, intervals, step_spans = step_times(prefect_home)
        where = timeline(started_epoch, ended_epoch, server, flow, intervals, steps)
        for name, (begin, end) in step_spans.items():
            steps[name]["peak_rss_mb"] = sampler.peak_during(begin, end)
        training = training_metrics(home, output)
        report = next(home.glob("reports/predictions_*.csv"))
        with report.open(newline="") as rows:  # by column name: columns are only ever added
            statuses = dict(Counter(row["status"] for row in csv.DictReader(rows)))

    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "copies": copies,
        "tickers": tickers or sum(statuses.values()),
        "code": git_head(args.root),
        "command": " ".join(["closecast", *command[3:]]).replace(tmp, "$TMP"),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "wall_s": round(wall_s, 1),
        "peak_process_mb": round(peak_process_mb, 1),
        "peak_tree_mb": round(sampler.peak / 2**20, 1),
        "targets": {"wall_s": TARGET_S, "peak_mb": TARGET_MB},
        "steps": {k: {m: round(v, 2) for m, v in s.items()} for k, s in steps.items()},
        "import_floor_s": round(floor_s, 2),
        "where_the_time_goes_s": {k: round(v, 2) for k, v in where.items()},
        "training": training,
        "report_statuses": statuses,
    }
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{'step':<22}{'task runs':>10}{'sum s':>10}{'span s':>10}{'peak MB':>10}")
    for name, step in result["steps"].items():
        print(
            f"{name:<22}{step['task_runs']:>10.0f}{step['sum_s']:>10.1f}{step['span_s']:>10.1f}"
            f"{step['peak_rss_mb']:>10.0f}"
        )
    print(
        f"wall {wall_s:.1f}s (target {TARGET_S:.0f}s); peak memory {peak_process_mb:.0f} MB "
        f"largest process, {result['peak_tree_mb']:.0f} MB process tree (target {TARGET_MB:.0f})"
    )
    print("\nwhere the time goes (s)")
    for name, seconds in result["where_the_time_goes_s"].items():
        print(f"  {name:<66}{seconds:>7.2f}")
    print(f"  (import floor alone, before the run: {floor_s:.2f}s)")
    print(f"training: {training}; report: {statuses}")
    print(f"load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs")
    print(f"written to {result_path}")
    return result


if __name__ == "__main__":
    sys.exit(main())
