"""The migrated Prefect database every Prefect server of the suite starts from, made once
per test session for all xdist workers.

Migrating a fresh database takes ~9 s of CPU on one core. The xdist controller starts
`python -m tests.prefect_template BASETEMP` as it configures (tests/conftest.py), so that
the migration runs while the workers import and collect, instead of two workers waiting
for the third to make it; without a controller (`-n 0`), the first test that needs it
makes it. Either way under one lock: whoever comes second finds it made.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from filelock import FileLock

TIMEOUT_S = 300


def make_template(shared: Path) -> Path:
    """`shared`/prefect-template/prefect.db, migrated; made now unless it is already."""
    path = shared / "prefect-template" / "prefect.db"
    with FileLock(shared / "prefect-template.lock"):
        if not path.is_file():
            making = shared / "prefect-template-making"
            shutil.rmtree(making, ignore_errors=True)  # left by a try that was killed
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env |= {"PREFECT_HOME": str(making), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            command = [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"]
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=TIMEOUT_S)
            making.rename(path.parent)
    return path


if __name__ == "__main__":
    make_template(Path(sys.argv[1]))
