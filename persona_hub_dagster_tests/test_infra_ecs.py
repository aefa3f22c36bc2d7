"""The production run launcher (dagster-aws's EcsRunLauncher, as infra/dagster.yaml configures it) against moto's ECS
and EC2 APIs: what it registers and starts for runs of our code location.

Real ECS is out of reach here (no AWS account, no network): moto's server records the API calls (task definitions,
tasks with their overrides and tags) but starts nothing. What this covers is the launcher's side of the contract:
the task definition (image, cpu/memory, forwarded environment), the command each task runs
(`dagster api execute_run <run>`), the larger task LLM-stage runs ask for through their ecs/cpu and ecs/memory run
tags, and the calls run monitoring and termination make.

One deliberate difference from production: infra/dagster.yaml sets `use_current_ecs_task_config: true`, which reads
the cluster, subnets, security groups and the base task definition from the ECS task metadata endpoint of the
launching process (the daemon's own task). There is no such endpoint here, so the test turns it off and passes the
same information explicitly (`run_task_kwargs` with a moto cluster and network, a `task_definition` dict); every other
key of the production block is used as it is.

Two gaps of moto 5.2.5 (not of ECS) are bridged here, each with the smallest change:
- RunTask fails (HTTP 500, a TypeError in `_calculate_task_resource_requirements`) for a task definition whose
  containers have no `memory`/`memoryReservation`: real Fargate takes the task-level size, which is all the launcher
  sets. A hook on the launcher's ECS client adds `memoryReservation` (the task's memory) to such containers as the
  request is sent; the launcher's own comparison for reusing task definitions ignores that field.
- RunTask with awsvpc networking fails (AttributeError `private_dns_name`) unless the VPC has DNS hostnames enabled,
  as ECS VPCs normally do: the fixture's VPC enables them.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import boto3
import pytest
import yaml
from dagster._core.launcher import WorkerStatus
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import instance_for_test
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import deserialize_value

from persona_hub_dagster.definitions import defs
from persona_hub_dagster.defs.automation import SETTINGS
from persona_hub_dagster_tests.conftest import REPO, S3_ENV

# The moto server is the same one the S3 tests use (it serves every AWS API).
pytestmark = pytest.mark.aws

PRODUCTION_INSTANCE = REPO / "infra" / "dagster.yaml"
LOCATION = "persona_hub_dagster"
REPOSITORY = "__repository__"  # the repository a Definitions object loads as
# What the code server reports as its image (DAGSTER_CURRENT_IMAGE in production): runs are launched from it.
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/persona-hub:test"
# The values the daemon (which launches queued runs) forwards to every run's container.
FORWARDED = {
    "PERSONA_HUB_STORAGE": "s3://persona-hub-test/persona-hub/delta",
    "PERSONA_HUB_SOURCE": "s3://persona-hub-test/persona-hub/corpus",
    "PERSONA_HUB_LLM_BASE_URL": "http://vllm.internal:8000/v1",
    "PERSONA_HUB_LLM_MODEL": "Qwen/Qwen2.5-7B-Instruct",
}


def production_run_launcher() -> dict:
    return yaml.safe_load(PRODUCTION_INSTANCE.read_text())["run_launcher"]


@pytest.fixture(scope="module")
def aws(moto_endpoint):
    """The AWS_* environment pointed at moto for this module, a cluster and an awsvpc network (Fargate's)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {**S3_ENV, "AWS_ENDPOINT_URL": moto_endpoint, **FORWARDED}.items():
            patch.setenv(key, value)
        ecs, ec2 = boto3.client("ecs"), boto3.client("ec2")
        cluster = ecs.create_cluster(clusterName=f"persona-hub-{uuid.uuid4().hex[:8]}")["cluster"]["clusterArn"]
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto needs it (see the docstring)
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName=f"runs-{uuid.uuid4().hex[:8]}", Description="runs", VpcId=vpc)
        yield SimpleNamespace(ecs=ecs, cluster=cluster, subnet=subnet, security_group=group["GroupId"], patch=patch)


def launcher_config(aws) -> dict:
    block = production_run_launcher()
    config = dict(block["config"])
    # Production takes these from its own task (see the module docstring); here they are explicit.
    assert config.pop("use_current_ecs_task_config") is True
    config.update(
        use_current_ecs_task_config=False,
        task_definition={"requires_compatibilities": ["FARGATE"], "log_group": "/persona-hub/runs"},
        run_task_kwargs={
            "cluster": aws.cluster,
            "launchType": "FARGATE",
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": [aws.subnet],
                    "securityGroups": [aws.security_group],
                    "assignPublicIp": "DISABLED",
                }
            },
        },
    )
    return {"module": block["module"], "class": block["class"], "config": config}


def _container_memory_for_moto(params, **_):
    """See the module docstring: moto's RunTask needs a container-level memory reservation."""
    for container in params.get("containerDefinitions", []):
        if "memory" not in container and "memoryReservation" not in container:
            container["memoryReservation"] = int(params["memory"])


@pytest.fixture(scope="module")
def instance(aws):
    with instance_for_test(overrides={"run_launcher": launcher_config(aws)}) as instance:
        events = instance.run_launcher.ecs.meta.events
        events.register("before-parameter-build.ecs.RegisterTaskDefinition", _container_memory_for_moto)
        yield instance


@pytest.fixture(scope="module")
def workspace(instance):
    """Our code location loaded in process, reporting IMAGE as its image (as the code server does in production)."""
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name="persona_hub_dagster.definitions", working_directory=str(REPO)),
        container_image=IMAGE,
        location_name=LOCATION,
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as context:
        yield context.create_request_context()


def launch(instance, workspace, job_name: str, tags: dict[str, str] | None = None):
    """Create a run of the job as the webserver or a sensor does (the job's run tags, then the request's) and hand it
    to the launcher (as the daemon does when it dequeues the run)."""
    remote_job = workspace.get_code_location(LOCATION).get_repository(REPOSITORY).get_full_job(job_name)
    run = instance.create_run_for_job(
        defs.resolve_job_def(job_name),
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        tags={**remote_job.run_tags, **(tags or {})},
    )
    instance.launch_run(run.run_id, workspace)
    return instance.get_run_by_id(run.run_id)


def ecs_task(aws, run) -> dict:
    assert run.tags["ecs/cluster"] == aws.cluster
    (task,) = aws.ecs.describe_tasks(cluster=aws.cluster, tasks=[run.tags["ecs/task_arn"]], include=["TAGS"])["tasks"]
    return task


def run_container(task: dict) -> dict:
    (override,) = task["overrides"]["containerOverrides"]
    return override


def test_run_becomes_an_ecs_task_from_the_code_servers_image(aws, instance, workspace):
    run = launch(instance, workspace, "land_text_shard", tags={"dagster/partition": "shard-0001"})
    task = ecs_task(aws, run)
    resources = production_run_launcher()["config"]["run_resources"]

    # The task definition: the code server's image, production's default size, awsvpc on Fargate, the forwarded
    # environment (the values of the launching process) plus the job name.
    definition = aws.ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    (container,) = definition["containerDefinitions"]
    assert container["name"] == "run"
    assert container["image"] == IMAGE
    assert (definition["cpu"], definition["memory"]) == (resources["cpu"], resources["memory"])
    assert definition["networkMode"] == "awsvpc"
    assert definition["requiresCompatibilities"] == ["FARGATE"]
    environment = {e["name"]: e["value"] for e in container["environment"]}
    assert environment == {**FORWARDED, "DAGSTER_RUN_JOB_NAME": "land_text_shard"}
    assert container["logConfiguration"]["options"]["awslogs-group"] == "/persona-hub/runs"

    # The task: RunTask on the cluster with the run's command and production's default size as overrides.
    assert task["launchType"] == "FARGATE"
    override = run_container(task)
    assert override["name"] == "run"
    assert override["command"][:3] == ["dagster", "api", "execute_run"]
    args = deserialize_value(override["command"][3], ExecuteRunArgs)
    assert args.run_id == run.run_id
    assert args.job_origin.job_name == "land_text_shard"
    # The run loads the job the way the code server does: same module, same image.
    assert args.job_origin.repository_origin.code_pointer.module == "persona_hub_dagster.definitions"
    assert args.job_origin.repository_origin.container_image == IMAGE
    assert (override["cpu"], override["memory"]) == (int(resources["cpu"]), int(resources["memory"]))
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == (resources["cpu"], resources["memory"])
    ecs_tags = {t["key"]: t["value"] for t in task["tags"]}
    assert ecs_tags["dagster/run_id"] == run.run_id
    assert ecs_tags["dagster/job_name"] == "land_text_shard"

    # A second run of the same job reuses the task definition (no new revision per run).
    again = launch(instance, workspace, "land_text_shard", tags={"dagster/partition": "shard-0002"})
    assert ecs_task(aws, again)["taskDefinitionArn"] == task["taskDefinitionArn"]

    # Run monitoring (enabled in infra/dagster.yaml) asks ECS for the task's state; termination stops the task.
    launcher = instance.run_launcher
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    assert launcher.terminate(run.run_id)
    assert ecs_task(aws, run)["lastStatus"] == "STOPPED"


def test_llm_stage_runs_get_the_larger_task(aws, instance, workspace):
    # process_text_shard carries the LLM run tags (defs/automation.py); so do the runs of the LLM stages' sensor.
    run = launch(instance, workspace, "process_text_shard", tags={"dagster/partition": "shard-0001"})
    assert {k: run.tags[k] for k in ("ecs/cpu", "ecs/memory")} == SETTINGS.llm_run_tags
    cpu, memory = SETTINGS.llm_run_tags["ecs/cpu"], SETTINGS.llm_run_tags["ecs/memory"]
    default = production_run_launcher()["config"]["run_resources"]
    assert int(cpu) > int(default["cpu"]) and int(memory) > int(default["memory"])

    task = ecs_task(aws, run)
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == (cpu, memory)
    override = run_container(task)
    assert (override["cpu"], override["memory"]) == (int(cpu), int(memory))
    assert deserialize_value(override["command"][3], ExecuteRunArgs).job_origin.job_name == "process_text_shard"


def test_explicit_task_size_tags_override_the_default(aws, instance, workspace):
    run = launch(instance, workspace, "land_text_shard", tags={"ecs/cpu": "4096", "ecs/memory": "16384"})
    task = ecs_task(aws, run)
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("4096", "16384")
    assert (run_container(task)["cpu"], run_container(task)["memory"]) == (4096, 16384)


def test_forwarded_variables_must_be_set_where_runs_are_launched(aws, instance, workspace):
    """env_vars without a value are read from the launching process (the daemon): one that is unset there fails the
    launch, so every deployment sets all four (an empty PERSONA_HUB_LLM_BASE_URL where there is no LLM server)."""
    aws.patch.delenv("PERSONA_HUB_LLM_MODEL")
    try:
        with pytest.raises(Exception, match="PERSONA_HUB_LLM_MODEL"):
            launch(instance, workspace, "land_text_shard")
    finally:
        aws.patch.setenv("PERSONA_HUB_LLM_MODEL", FORWARDED["PERSONA_HUB_LLM_MODEL"])
