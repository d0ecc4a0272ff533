"""`make run` against the import floor: a second `closecast run --source sample`, timed.

The nightly a user runs is a second run: the home (prices, MLflow database,
a champion) and the Prefect home already exist. This script makes a fresh
home and Prefect home, runs `closecast run --source sample --home H` once
untimed (the first run: it fetches, creates the databases, registers v1),
then times, interleaved so that load from other processes affects both alike:

- the import floor: `python -c "import torch, mlflow, prefect, pandas"`;
- `closecast run --source sample --home H` (a second run on H).

Each is repeated (`--runs`, default 3); the figure is the ratio of the
medians (issue 14: within 3). On a shared machine the absolute times move
with the load; the ratio measured in one interleaved run is the number.
Per-step times of the last timed run come from the Prefect API.

Usage:
    python benchmarks/run_speed.py [--runs 3] [--json]

Writes benchmarks/results/run_speed.json. With --json the last line of
output is the same JSON object.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "run_speed.json"
IMPORT_FLOOR = "import torch, mlflow, prefect, pandas"
TARGET_RATIO = 3.0


def closecast_command() -> list[str]:
    """The `closecast` script `make run` runs, beside this Python; else `python -m closecast.cli`."""
    script = Path(sys.executable).parent / "closecast"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "closecast.cli"]


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of `command` and its output; exits when it fails."""
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wall_s = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], file=sys.stderr)
        sys.exit(f"{' '.join(command)} exited {done.returncode}")
    return wall_s, done.stdout


def timeline(prefect_home: Path, started: float, ended: float) -> dict[str, float]:
    """Where the last run's seconds went: before its flow run, each step, after it.

    Read back through Prefect's own temporary API from the runs in
    `prefect_home`: the last `nightly` flow run, its task runs and those of
    its subflows, each step's summed run time (a mapped step sums its task
    runs), and the flow's own time between them. `started` and `ended` are
    the command's wall-clock start and end (time.time()).
    """
    os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.pop("PREFECT_API_URL", None)
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        nightly = FlowFilter(name=FlowFilterName(any_=["nightly"]))
        flow_run = client.read_flow_runs(
            flow_filter=nightly, sort=FlowRunSort.START_TIME_DESC, limit=1
        )[0]
        assert flow_run.start_time is not None and flow_run.end_time is not None
        after = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=flow_run.start_time))
        tasks = client.read_task_runs(task_run_filter=after, limit=200)
    flow_s = (flow_run.end_time - flow_run.start_time).total_seconds()
    steps: dict[str, float] = {
        "start -> flow run begins (imports, CLI, server)": flow_run.start_time.timestamp() - started
    }
    for run in sorted(tasks, key=lambda r: r.start_time or flow_run.start_time):
        name = re.sub(r"-[0-9a-f]{3}$", "", run.name.split(" ")[0])
        steps[name] = steps.get(name, 0.0) + run.total_run_time.total_seconds()
    tasks_s = sum(v for k, v in steps.items() if not k.startswith("start"))
    steps["flow, between tasks (engine, subflow, API)"] = flow_s - tasks_s
    steps["flow run ends -> exit (server stop, exit)"] = ended - flow_run.end_time.timestamp()
    steps["total"] = ended - started
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions of each")
    parser.add_argument("--json", action="store_true", help="print the JSON result last")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    floor = [sys.executable, "-c", IMPORT_FLOOR]
    with tempfile.TemporaryDirectory(prefix="closecast-run-speed-") as tmp:
        home, prefect_home = Path(tmp) / "home", Path(tmp) / "prefect"
        run = [*closecast_command(), "run", "--source", "sample", "--home", str(home)]
        env = {**os.environ, "PREFECT_HOME": str(prefect_home)}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            env.pop(name, None)
        load_before = os.getloadavg()
        first_s, _ = timed(run, env)
        floor_s, run_s = [], []
        for _ in range(args.runs):  # interleaved: the same load on both
            floor_s.append(timed(floor, env)[0])
            started = time.time()
            seconds, output = timed(run, env)
            ended = time.time()
            run_s.append(seconds)
        load_after = os.getloadavg()
        steps = timeline(prefect_home, started, ended)

    ratio = statistics.median(run_s) / statistics.median(floor_s)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "command": "closecast run --source sample --home $HOME (second run on the home)",
        "import_floor": f'python -c "{IMPORT_FLOOR}"',
        "first_run_s": round(first_s, 2),
        "run_s": [round(s, 2) for s in run_s],
        "import_floor_s": [round(s, 2) for s in floor_s],
        "median_run_s": round(statistics.median(run_s), 2),
        "median_import_floor_s": round(statistics.median(floor_s), 2),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "last_run_steps_s": {k: round(v, 2) for k, v in steps.items()},
        "last_run_output": output.strip().splitlines()[-4:],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{'':<32}{'median s':>10}  runs (s)")
    print(f"{'import floor':<32}{result['median_import_floor_s']:>10.2f}  {result['import_floor_s']}")
    print(f"{'closecast run (second run)':<32}{result['median_run_s']:>10.2f}  {result['run_s']}")
    print(f"{'closecast run (first run)':<32}{first_s:>10.2f}")
    print("\nwhere the last timed run's seconds went (Prefect API):")
    for name, seconds in result["last_run_steps_s"].items():
        print(f"  {name:<52}{seconds:>7.2f}")
    print(f"ratio run / import floor: {ratio:.2f} (target ≤ {TARGET_RATIO:.0f})")
    print(f"load average before/after: {load_before} / {load_after} on {os.cpu_count()} CPUs")
    print(f"written to {args.output}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
