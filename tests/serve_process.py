"""`closecast serve`'s own code path on an existing Prefect API, run as a process by the tests,
with a config the CLI cannot make (hidden 8, 2 epochs).

    python -m tests.serve_process CONFIG_JSON
"""

import sys

from closecast.cli.serve import serve_deployments
from closecast.core.config import PipelineConfig

if __name__ == "__main__":
    serve_deployments(PipelineConfig.model_validate_json(sys.argv[1]), port=0)
