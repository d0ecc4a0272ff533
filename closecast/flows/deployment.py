"""What a flow run started from a deployment (`serve`, a worker) takes from it.

Prefect merges a run's parameters into the deployment's key by key, so a
run given `config={"train": {"epochs": 1}}` would get that config alone:
every other field at its default, the home `.closecast` under the working
folder. `served_config` puts the deployment's own config under it instead.
"""

from closecast.core.config import PipelineConfig, overlay_config
from closecast.core.errors import log_expected_failures_in_one_line


def served_config(config: PipelineConfig) -> PipelineConfig:
    """The config a run computes with: in a deployment's run, the deployment's config with
    the fields this run's config sets; elsewhere (the CLI, a call from Python) `config`.

    A deployment's run also logs closecast's expected failures in one line, as
    the CLI does: it runs in a process of Prefect's runner, not of the CLI.
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    deployment_id = context.flow_run.deployment_id if context and context.flow_run else None
    if deployment_id is None:
        return config
    log_expected_failures_in_one_line()
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    served = deployment.parameters.get("config")
    if served is None:
        return config
    return overlay_config(config, PipelineConfig.model_validate(served))
