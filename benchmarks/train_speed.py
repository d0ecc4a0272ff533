"""Training speed: the reference scenario, and windows/s on a synthetic universe.

Reference scenario (PRODUCT.md §9): the first 1,000 closes of ^GSPC from the
offline `sample` source -> 990 windows of 10 closes, the first 792 for
training, MinMax-scaled close (`minmax_close`), LSTM(32) -> Dropout(0.2) ->
Dense(1), Adam, MSE, 50 epochs, batch 32, no early stopping. The number is
the median wall time of `closecast.models.training.fit` over several runs; the
textbook autograd step is timed too, for comparison.

Keras, side by side: with `--keras-python PATH` (default
$CLOSECAST_KERAS_PYTHON), an interpreter that has tensorflow and keras (not
closecast dependencies: e.g. `python3 -m venv /work/keras-venv &&
/work/keras-venv/bin/pip install tensorflow-cpu keras`), the reference Keras
code (benchmarks/keras_reference.py) trains the very same windows in a
subprocess, one run after each run of `fit`, interleaved, so both medians
come from the same machine state: `speedup_vs_keras` is their ratio. Without
one, the Keras half is skipped with a note and no ratio is reported.

Universe: 500 synthetic tickers (random walks), close/volume/open windows
encoded as the default target; windows per second of training at batch 32, 256 and
1024, with the thread count training picks and with each fixed count.

Usage:
    python benchmarks/train_speed.py [--runs 5] [--json] [--skip-universe]
                                     [--keras-python /work/keras-venv/bin/python]

Writes benchmarks/results/train_speed.json. With --json the last line of
output is the same JSON object.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from closecast.core.config import DistributionName  # noqa: E402
from closecast.models.encoding import Bounds, Encoding, fit_bounds  # noqa: E402
from closecast.models.lstm import LSTMConfig, LSTMForecaster  # noqa: E402
from closecast.models.training import (  # noqa: E402
    FitSettings,
    fit,
    make_stepper,
    seed_everything,
    torch_threads,
    train_epoch,
    training_threads,
)
from closecast.tasks.data.sources.sample import SampleSource  # noqa: E402
from closecast.tasks.modeling.windows import make_windows  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_speed.json"
REFERENCE_ROWS, WINDOW, TRAIN_WINDOWS = 1000, 10, 792
KERAS_SCRIPT = ROOT / "benchmarks" / "keras_reference.py"


def reference_tensors() -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """(train inputs, targets), (validation inputs, targets) of the reference scenario."""
    frame = SampleSource().download(["^GSPC"], None, None).frames["^GSPC"]
    closes = frame["close"].to_numpy(dtype=np.float64)[:REFERENCE_ROWS, None]  # (1000, 1)
    windows = make_windows(closes[:-1], WINDOW)  # (990, 10, 1): each has a next close
    next_close = closes[WINDOW:, 0]  # (990,)
    lo, hi = fit_bounds(closes[: TRAIN_WINDOWS + WINDOW])  # rows the training windows see
    n = len(windows)
    bounds = Bounds(lo=np.tile(lo, (n, 1)), hi=np.tile(hi, (n, 1)))  # (990, 1) each
    encoding = Encoding(features=("close",), target="minmax_close")
    inputs = torch.from_numpy(encoding.inputs(windows, bounds))
    targets = torch.from_numpy(encoding.targets(next_close, windows, bounds))
    train = (inputs[:TRAIN_WINDOWS], targets[:TRAIN_WINDOWS])
    validation = (inputs[TRAIN_WINDOWS:], targets[TRAIN_WINDOWS:])
    return train, validation


Split = tuple[torch.Tensor, torch.Tensor]


def time_fit(
    train: Split, validation: Split, fused_step: bool, distribution: DistributionName = "none"
) -> float:
    """Wall seconds of one `fit` on the reference scenario, from a freshly seeded model:
    the reference's one-output MSE head, or (issue 20) a distributional head on the same
    windows, whose NLL the fused step computes too."""
    settings = FitSettings(
        epochs=50, batch_size=32, patience=None, grad_clip=1.0, seed=0, fused_step=fused_step
    )
    seed_everything(0)
    lstm = LSTMConfig(hidden_size=32, dropout=0.2, distribution=distribution)
    model = LSTMForecaster(lstm, n_features=1)
    started = time.perf_counter()
    fit(model, train, validation, settings)
    return time.perf_counter() - started


class KerasReference:
    """benchmarks/keras_reference.py under another interpreter, one timed fit per `run()`."""

    def __init__(self, python: str, train: Split, validation: Split, folder: Path) -> None:
        data = folder / "reference_windows.npz"
        np.savez(
            data,
            x_train=train[0].numpy(),
            y_train=train[1].numpy(),
            x_val=validation[0].numpy(),
            y_val=validation[1].numpy(),
        )
        # TensorFlow's start-up banners go to a file, shown only if the subprocess fails.
        self.stderr = (folder / "keras_stderr.txt").open("w+")
        self.process = subprocess.Popen(
            [python, str(KERAS_SCRIPT), str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        reply = self._reply()
        self.versions = {k: v for k, v in reply.items() if k != "ready"}
        self.runs = 0

    def _reply(self) -> dict[str, object]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.stderr.seek(0)
            raise RuntimeError(
                f"the Keras reference exited ({self.process.wait()}):\n{self.stderr.read()[-3000:]}"
            )
        reply: dict[str, object] = json.loads(line)
        return reply

    def run(self) -> float:
        """Wall seconds of one Keras `model.fit` of the reference scenario."""
        assert self.process.stdin is not None
        self.process.stdin.write(f"run {self.runs}\n")
        self.process.stdin.flush()
        self.runs += 1
        return float(self._reply()["train_s"])  # type: ignore[arg-type]

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        self.stderr.close()


@contextmanager
def keras_reference(
    python: str | None, train: Split, validation: Split
) -> Iterator[KerasReference | None]:
    """The Keras subprocess, or None (with a note) when no interpreter was given."""
    if not python:
        print(
            "note: Keras half skipped (no --keras-python and no $CLOSECAST_KERAS_PYTHON): "
            "no speedup_vs_keras. E.g. python3 -m venv /work/keras-venv && "
            "/work/keras-venv/bin/pip install tensorflow-cpu keras"
        )
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="closecast-keras-") as folder:
        reference = KerasReference(python, train, validation, Path(folder))
        try:
            yield reference
        finally:
            reference.close()


def time_reference(
    runs: int, keras_python: str | None
) -> tuple[list[float], list[float], list[float], dict[str, object]]:
    """Seconds of `fit` (point head, then student_t head) and of the Keras reference, run
    after run, interleaved."""
    train, validation = reference_tensors()
    ours: list[float] = []
    student_t: list[float] = []
    keras: list[float] = []
    with keras_reference(keras_python, train, validation) as reference:
        for _ in range(runs):
            ours.append(time_fit(train, validation, fused_step=True))
            student_t.append(time_fit(train, validation, True, "student_t"))
            if reference is not None:
                keras.append(reference.run())
        versions = reference.versions if reference is not None else {}
    return ours, student_t, keras, versions


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def synthetic_universe(tickers: int, days: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded close/volume/open windows of random-walk tickers: (N, 10, 3), (N,)."""
    rng = np.random.default_rng(seed)
    log_close = np.cumsum(rng.normal(0, 0.015, (tickers, days)), axis=1) + np.log(50)
    close = np.exp(log_close)  # (tickers, days)
    open_ = close * np.exp(rng.normal(0, 0.005, close.shape))
    volume = rng.lognormal(14, 0.5, close.shape)
    values = np.stack([close, volume, open_], axis=-1)  # (tickers, days, 3)
    encoding = Encoding(features=("close", "volume", "open"))  # the default target
    windows = np.concatenate([make_windows(v[:-1], WINDOW) for v in values])  # (N, 10, 3)
    next_close = np.concatenate([v[WINDOW:, 0] for v in values])  # (N,)
    inputs = encoding.inputs(windows)
    targets = encoding.targets(next_close, windows)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def windows_per_second(
    inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, threads: int, steps: int
) -> float:
    """Training throughput of `steps` batches (best of two passes)."""
    n = min(len(inputs), batch_size * steps)
    settings = FitSettings(batch_size=batch_size)
    best = 0.0
    with torch_threads(threads):
        for _ in range(2):
            generator = seed_everything(0)
            model = LSTMForecaster(LSTMConfig(hidden_size=32), n_features=inputs.shape[-1])
            stepper = make_stepper(model, settings)
            started = time.perf_counter()
            train_epoch(model, stepper, inputs[:n], targets[:n], batch_size, generator)
            best = max(best, n / (time.perf_counter() - started))
            stepper.release()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="reference runs (median reported)")
    parser.add_argument("--json", action="store_true", help="print the JSON result last")
    parser.add_argument("--skip-universe", action="store_true", help="reference scenario only")
    parser.add_argument(
        "--keras-python",
        default=os.environ.get("CLOSECAST_KERAS_PYTHON"),
        help="an interpreter with tensorflow and keras, to time the Keras reference side by "
        "side (default $CLOSECAST_KERAS_PYTHON; none: skipped)",
    )
    args = parser.parse_args()

    try:
        fused, student_t, keras, keras_versions = time_reference(args.runs, args.keras_python)
    except (OSError, RuntimeError) as exc:
        sys.exit(f"the Keras reference failed ({args.keras_python}): {exc}")
    train, validation = reference_tensors()
    autograd = [time_fit(train, validation, False) for _ in range(max(1, min(args.runs, 3)))]
    result: dict[str, object] = {
        "scenario": "^GSPC first 1000 closes, 990 windows x 10, 792 train, minmax_close, "
        "hidden 32, 50 epochs, batch 32, no early stopping",
        "median_train_s": round(statistics.median(fused), 3),
        "train_s": [round(t, 3) for t in fused],
        "student_t_median_train_s": round(statistics.median(student_t), 3),
        "student_t_train_s": [round(t, 3) for t in student_t],
        "autograd_median_train_s": round(statistics.median(autograd), 3),
        "autograd_train_s": [round(t, 3) for t in autograd],
        "keras_median_train_s": round(statistics.median(keras), 3) if keras else None,
        "keras_train_s": [round(t, 3) for t in keras],
        "speedup_vs_keras": (
            round(statistics.median(keras) / statistics.median(fused), 2) if keras else None
        ),
        "student_t_speedup_vs_keras": (
            round(statistics.median(keras) / statistics.median(student_t), 2) if keras else None
        ),
        "keras_versions": keras_versions,
        "cpu_model": cpu_model(),
        "threads": training_threads(32, 32),
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    print("reference scenario (median of runs, seconds)")
    print(f"  fused step     {result['median_train_s']:>7.3f}   runs {result['train_s']}")
    print(
        f"  fused, student_t head {result['student_t_median_train_s']:>7.3f}   "
        f"runs {result['student_t_train_s']}"
    )
    print(
        f"  autograd step  {result['autograd_median_train_s']:>7.3f}   "
        f"runs {result['autograd_train_s']}"
    )
    if keras:
        print(
            f"  keras (ref.)   {result['keras_median_train_s']:>7.3f}   runs {result['keras_train_s']}"
            f"   (interleaved with the fused runs)"
        )
        print(f"  speedup vs keras: {result['speedup_vs_keras']}x (ratio of the medians)")
        print(f"  student_t head vs keras: {result['student_t_speedup_vs_keras']}x")
    print(f"  load average (1 min): {result['load_average_1m']}")

    if not args.skip_universe:
        inputs, targets = synthetic_universe(500, 300)
        rows = []
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        for batch in (32, 256, 1024):
            steps = max(16, 8_192 // batch)
            auto = training_threads(batch, 32)
            row: dict[str, object] = {"batch_size": batch, "auto_threads": auto}
            for threads in sorted({1, cores}):
                row[f"windows_per_s_{threads}t"] = round(
                    windows_per_second(inputs, targets, batch, threads, steps)
                )
            row["windows_per_s"] = row[f"windows_per_s_{auto}t"]
            rows.append(row)
        result["universe"] = {"tickers": 500, "windows": len(inputs), "rows": rows}
        print(f"\nsynthetic universe: 500 tickers, {len(inputs)} windows of 10 x 3, hidden 32")
        keys = [k for k in rows[0] if k.startswith("windows_per_s_")]
        print("  batch  auto-threads  " + "  ".join(f"{k[14:]:>10}" for k in keys))
        for row in rows:
            cells = "  ".join(f"{row[k]:>10}" for k in keys)
            print(f"  {row['batch_size']:>5}  {row['auto_threads']:>12}  {cells}")
        print("  (windows per second of training; auto-threads is what training uses)")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
