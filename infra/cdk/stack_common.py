"""What every part of the PersonaHub stack shares: the deployment's settings, the constants of the image and the
instance layout, and two small helpers (checkov suppressions, the ECS execution role).

The settings are re-exported by persona_hub_stack.py, where app.py and the tests import them from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

# Paths inside the image (infra/Dockerfile) and the Dagster instance layout (infra/dagster.yaml).
ENTRYPOINT = "/opt/persona-hub/infra/entrypoint.sh"
DAGSTER_HOME = "/opt/dagster/home"
CODE_SERVER_PORT = 4000
WEBSERVER_PORT = 3000
VLLM_PORT = 8000
# Everything the platform reads or writes in the bucket lives under this prefix; the roles are scoped to it.
BUCKET_PREFIX = "persona-hub"
DB_NAME = "dagster"
DB_USER = "dagster"
NAMESPACE = "persona-hub.local"

# Fargate's valid task sizes: cpu units -> allowed memory (MiB).
FARGATE_SIZES: dict[int, range | tuple[int, ...]] = {
    256: (512, 1024, 2048),
    512: tuple(range(1024, 4096 + 1, 1024)),
    1024: tuple(range(2048, 8192 + 1, 1024)),
    2048: tuple(range(4096, 16384 + 1, 1024)),
    4096: tuple(range(8192, 30720 + 1, 1024)),
    8192: tuple(range(16384, 61440 + 1, 4096)),
    16384: tuple(range(32768, 122880 + 1, 8192)),
}

RETENTION = {
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    90: logs.RetentionDays.THREE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}

_POOL_LIMITS = re.compile(r"^[A-Za-z_][\w-]*=\d+(,[A-Za-z_][\w-]*=\d+)*$")


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True)
class PersonaHubSettings:
    """The deployment's knobs; each field is the CDK context key of the same name (`cdk deploy -c image=...`)."""

    # The one image of webserver, daemon, code server and every run (infra/Dockerfile), pushed by CI.
    image: str = "123456789012.dkr.ecr.us-east-1.amazonaws.com/persona-hub:latest"
    # Build infra/Dockerfile as a CDK asset instead of using `image` (needs docker where cdk runs).
    build_image: bool = False
    # QueuedRunCoordinator limit: runs (ECS tasks) at once.
    max_concurrent_runs: int = 8
    # Dagster pool limits, applied by infra/entrypoint.sh when the daemon starts.
    pool_limits: str = "persona_hub=1,llm=16,gpu=4"
    # The stage settings every automated run uses (PERSONA_HUB_STAGE_SETTINGS: a YAML/JSON file, e.g.
    # s3://<bucket>/persona-hub/stage_settings.yaml, which the tasks may read); empty: the asset defaults.
    stage_settings: str = ""
    # How runs treat model-written programs (PERSONA_HUB_SANDBOX): "bwrap" fails closed (eval/math and eval/tools fail
    # where the sandbox cannot start, as on Fargate); "auto" evaluates them without running programs and says so.
    sandbox: str = "bwrap"
    # The vLLM fleet: replicas (one per GPU instance), instance type, model, image.
    vllm_replicas: int = 1
    gpu_instance_type: str = "g5.xlarge"
    vllm_model: str = "Qwen/Qwen2.5-7B-Instruct"
    vllm_image: str = "vllm/vllm-openai:v0.33.0"
    vllm_max_model_len: int = 8192
    # Memory the vLLM container reserves on its instance (MiB; a g5.xlarge registers about 15.5 GiB).
    vllm_memory_mib: int = 12288
    # An existing Secrets Manager secret holding a Hugging Face token (gated models); empty: none.
    hf_token_secret_arn: str = ""
    # An API key between the Dagster tasks and the model server: "" (none), "generate" (a new secret, also given
    # to vLLM as VLLM_API_KEY) or the ARN of an existing secret (e.g. a hosted endpoint's key).
    llm_api_key: str = ""
    # Fargate size of an ordinary run, and of runs of LLM stages (their sensor/jobs set the ecs/cpu, ecs/memory tags).
    run_cpu: int = 1024
    run_memory: int = 4096
    llm_run_cpu: int = 4096
    llm_run_memory: int = 16384
    # Prefix of the task definition families the EcsRunLauncher registers (its task_definition_prefix; <= 16 chars).
    run_task_family_prefix: str = "run"
    # RDS instance class (without the "db." prefix), storage and availability.
    db_instance: str = "t4g.medium"
    db_storage_gib: int = 50
    db_multi_az: bool = True
    # The webserver's ALB: internal (reachable from the VPC and what is routed into it) unless public=true.
    public_webserver: bool = False
    # ACM certificate for HTTPS on the webserver's ALB (required when public).
    certificate_arn: str = ""
    # Who may reach the webserver ALB (default: the VPC's own range).
    webserver_allowed_cidr: str = ""
    nat_gateways: int = 1
    log_retention_days: int = 365

    def __post_init__(self) -> None:
        for cpu, memory, what in (
            (self.run_cpu, self.run_memory, "run_cpu/run_memory"),
            (self.llm_run_cpu, self.llm_run_memory, "llm_run_cpu/llm_run_memory"),
        ):
            if cpu not in FARGATE_SIZES or memory not in FARGATE_SIZES[cpu]:
                raise ValueError(f"{what}={cpu}/{memory} is not a Fargate task size")
        if not _POOL_LIMITS.match(self.pool_limits):
            raise ValueError(f"pool_limits must look like 'pool=N,other=M', got {self.pool_limits!r}")
        if self.max_concurrent_runs < 1 or self.vllm_replicas < 0 or self.nat_gateways < 1:
            raise ValueError("max_concurrent_runs >= 1, vllm_replicas >= 0 and nat_gateways >= 1")
        if not 0 < len(self.run_task_family_prefix) <= 16:
            raise ValueError("run_task_family_prefix: 1 to 16 characters (dagster-aws's limit)")
        if self.public_webserver and not (self.certificate_arn and self.webserver_allowed_cidr):
            # Dagster's open-source webserver has no login: never on the internet over HTTP or to everyone unasked.
            raise ValueError("public_webserver=true needs certificate_arn and webserver_allowed_cidr")
        if self.sandbox not in ("bwrap", "auto", "weak", "off"):
            raise ValueError(f"sandbox must be bwrap, auto, weak or off (PERSONA_HUB_SANDBOX), got {self.sandbox!r}")
        if self.log_retention_days not in RETENTION:
            raise ValueError(f"log_retention_days must be one of {sorted(RETENTION)}, got {self.log_retention_days}")

    @classmethod
    def from_context(cls, node: Construct | Any) -> PersonaHubSettings:
        """Each field from the CDK context when set there (strings from `-c`, typed values from cdk.json)."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = node.try_get_context(field.name)
            if raw is None:
                continue
            kind = field.type if isinstance(field.type, type) else {"bool": bool, "int": int, "str": str}[field.type]
            values[field.name] = _parse_bool(raw) if kind is bool else kind(raw)
        return cls(**values)


def execution_role(stack: cdk.Stack, construct_id: str) -> iam.Role:
    """Used by the ECS agent to pull the image, write logs and inject secrets (never by application code)."""
    return iam.Role(stack, construct_id, assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))


def checkov_skip(construct: Construct, *skips: tuple[str, str]) -> None:
    """Record checkov suppressions, each with its reason, in the resource's CloudFormation Metadata."""
    resource = construct.node.default_child if not isinstance(construct, cdk.CfnResource) else construct
    assert isinstance(resource, cdk.CfnResource), construct
    existing = resource.cfn_options.metadata or {}
    entries = existing.get("checkov", {}).get("skip", [])
    entries += [{"id": check, "comment": comment} for check, comment in skips]
    resource.cfn_options.metadata = {**existing, "checkov": {"skip": entries}}
