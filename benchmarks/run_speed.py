"""`make run` against the import floor: a second `closecast run --source sample`, timed.

The nightly a user runs is a second run: the home (prices, MLflow database,
a champion) and the Prefect home already exist. This script makes a fresh
home and Prefect home, runs `closecast run --source sample --home H` once
(the first run: it fetches, creates both databases, registers v1; timed
for information), then times, interleaved so that load from other
processes affects both alike:

- the import floor: `python -c "import torch, mlflow, prefect, pandas"`;
- `closecast run --source sample --home H` (a second run on H).

Each is repeated (`--runs`, default 3); the figure is the ratio of the
medians (issue 14: within 3); the ratio of each interleaved pair is shown
beside it. On a shared machine the absolute times move with the load; the
ratio measured in one interleaved run is the number.

Where the seconds went, step by step (median of the timed runs), comes
from the Prefect API (each flow run's start and end, each task run's run
time); for reference, the
temporary Prefect API server's start (spawn to first answer) and the
nightly's imports are timed alone once.

The command runs as `python -m closecast.cli.app` from this checkout (what the
`closecast` script of `make run` runs), so a copy of this script in another
checkout times that checkout's code with the same Python.

Usage:
    python benchmarks/run_speed.py [--runs 3] [--json]

Writes benchmarks/results/run_speed.json. With --json the last line of
output is the same JSON object.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "run_speed.json"
IMPORT_FLOOR = "import torch, mlflow, prefect, pandas"
NIGHTLY_IMPORTS = "import closecast.cli.app, closecast.flows.nightly"
TARGET_RATIO = 3.0
BEFORE = "start -> flow run begins (CLI, imports, API)"
BETWEEN = "flow, between tasks (engine, subflow, MLflow run, API)"
AFTER = "flow run ends -> exit (logs, server stop, exit)"


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of `command` (run in this checkout) and its output; exits when it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], file=sys.stderr)
        sys.exit(f"{' '.join(command)} exited {done.returncode}")
    return wall_s, done.stdout


def server_start_s(env: dict[str, str]) -> float:
    """Seconds from spawning the temporary Prefect API server to its first answer, alone."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        started = time.perf_counter()
        server = subprocess.Popen(
            [sys.executable, "-m", "closecast.cli.prefect_api", str(listener.fileno()),
             str(os.getpid()), "--port", str(port)],
            cwd=ROOT, env=env, pass_fds=[listener.fileno()],
        )  # fmt: skip
    try:
        # The socket is bound before the server listens: the request waits in its backlog.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=120):
            return time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()


def timelines(prefect_home: Path, spans: list[tuple[float, float]]) -> list[dict[str, float]]:
    """Where each timed run's seconds went: before its flow run, each step, after it.

    Read back through Prefect's own temporary API from the runs in
    `prefect_home`: the last len(spans) `nightly` flow runs (one per timed
    run, in order), the task runs that started during each (a mapped step
    sums its task runs; a subflow's own task run is left out, its tasks are
    counted), and the flow's own time between them. `spans` are the
    commands' wall-clock (start, end) pairs (time.time()).
    """
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentTaskRunId,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    found = []
    with get_client(sync_client=True) as client:
        nightly = FlowFilter(name=FlowFilterName(any_=["nightly"]))
        flow_runs = client.read_flow_runs(
            flow_filter=nightly, sort=FlowRunSort.START_TIME_DESC, limit=len(spans)
        )[::-1]
        subflow_filter = FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=False)
        )
        wrappers = {
            r.parent_task_run_id for r in client.read_flow_runs(flow_run_filter=subflow_filter)
        }
        for flow_run in flow_runs:
            assert flow_run.start_time is not None and flow_run.end_time is not None
            since = TaskRunFilterStartTime(after_=flow_run.start_time, before_=flow_run.end_time)
            tasks = client.read_task_runs(
                task_run_filter=TaskRunFilter(start_time=since), limit=200
            )
            found.append((flow_run, tasks))
    result = []
    for (started, ended), (flow_run, tasks) in zip(spans, found, strict=True):
        since = flow_run.start_time
        steps: dict[str, float] = {BEFORE: since.timestamp() - started}
        for run in sorted(tasks, key=lambda r: r.start_time or since):
            if run.id in wrappers:
                continue
            name = re.sub(r"-[0-9a-f]{3}$", "", run.name.split(" ")[0])
            steps[name] = steps.get(name, 0.0) + run.total_run_time.total_seconds()
        tasks_s = sum(v for k, v in steps.items() if k != BEFORE)
        steps[BETWEEN] = (flow_run.end_time - since).total_seconds() - tasks_s
        steps[AFTER] = ended - flow_run.end_time.timestamp()
        steps["total"] = ended - started
        result.append(steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions of each")
    parser.add_argument("--json", action="store_true", help="print the JSON result last")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    floor = [sys.executable, "-c", IMPORT_FLOOR]
    heavy = "from closecast.cli.imports import heavy_imports\nwith heavy_imports():\n    "
    nightly_imports = [sys.executable, "-c", NIGHTLY_IMPORTS]
    if (ROOT / "closecast" / "imports.py").is_file():  # imported as the CLI imports them
        nightly_imports = [sys.executable, "-c", heavy + NIGHTLY_IMPORTS]
    with tempfile.TemporaryDirectory(prefix="closecast-run-speed-") as tmp:
        home, prefect_home = Path(tmp) / "home", Path(tmp) / "prefect"
        run = [sys.executable, "-m", "closecast.cli.app", "run", "--source", "sample"]
        run += ["--home", str(home)]
        env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(name, None)
        load_before = os.getloadavg()
        first_s, _ = timed(run, env)
        floor_s, run_s, spans = [], [], []
        for _ in range(args.runs):  # interleaved: the same load on both
            floor_s.append(timed(floor, env)[0])
            started = time.time()
            seconds, output = timed(run, env)
            spans.append((started, time.time()))
            run_s.append(seconds)
        load_after = os.getloadavg()
        server_s = server_start_s(env)
        imports_s = timed(nightly_imports, env)[0]
        per_run = timelines(prefect_home, spans)
    steps = {name: statistics.median(run.get(name, 0.0) for run in per_run) for name in per_run[-1]}

    ratio = statistics.median(run_s) / statistics.median(floor_s)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "root": str(ROOT),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "command": "closecast run --source sample --home $HOME (second run on the home)",
        "import_floor": f'python -c "{IMPORT_FLOOR}"',
        "first_run_s": round(first_s, 2),
        "run_s": [round(s, 2) for s in run_s],
        "import_floor_s": [round(s, 2) for s in floor_s],
        "pair_ratios": [round(r / f, 2) for r, f in zip(run_s, floor_s, strict=True)],
        "median_run_s": round(statistics.median(run_s), 2),
        "median_import_floor_s": round(statistics.median(floor_s), 2),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "server_start_alone_s": round(server_s, 2),
        "nightly_imports_alone_s": round(imports_s, 2),
        "median_steps_s": {k: round(v, 2) for k, v in steps.items()},
        "steps_s_per_run": [{k: round(v, 2) for k, v in run.items()} for run in per_run],
        "last_run_output": output.strip().splitlines()[-4:],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'':<32}{'median s':>10}  runs (s)")
    print(
        f"{'import floor':<32}{result['median_import_floor_s']:>10.2f}  {result['import_floor_s']}"
    )
    print(f"{'closecast run (second run)':<32}{result['median_run_s']:>10.2f}  {result['run_s']}")
    print(f"{'closecast run (first run)':<32}{first_s:>10.2f}")
    print(f"{'ratio of each pair':<32}{'':>10}  {result['pair_ratios']}")
    print("\nwhere the seconds went, median of the timed runs (Prefect API):")
    for name, seconds in result["median_steps_s"].items():
        print(f"  {name:<56}{seconds:>7.2f}")
    print(f"alone, for reference: Prefect API server start {server_s:.2f} s (spawn to first")
    print(f"answer; in parallel with the run's imports), the nightly's imports {imports_s:.2f} s")
    print(f"\nratio run / import floor: {ratio:.2f} (target ≤ {TARGET_RATIO:.0f})")
    print(f"load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs")
    print(f"written to {args.output}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
