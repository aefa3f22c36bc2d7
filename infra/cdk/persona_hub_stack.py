"""The production deployment of persona-hub-dagster on AWS, as one CDK stack.

What it creates (see README.md beside this file):
- a VPC (2 AZs: public subnets for the NAT gateway(s) and an optional public ALB, private subnets with egress for
  every task, isolated subnets for RDS) with flow logs and an S3 gateway endpoint;
- the tables' bucket (Delta tables, corpus, compute logs under one prefix), KMS-encrypted, versioned, private, TLS only;
- RDS Postgres 16 for the Dagster instance (run/event/schedule storage), credentials generated into Secrets Manager;
- an ECS cluster with three Fargate services from ONE image: code-server (gRPC, Cloud Map), webserver (behind an ALB,
  internal unless asked otherwise), daemon (queues runs and launches each one as an ECS task: dagster-aws
  EcsRunLauncher with use_current_ecs_task_config);
- a GPU fleet (EC2 Auto Scaling group, ECS GPU AMI, capacity provider) running `vllm serve` behind an internal ALB:
  the OpenAI-compatible endpoint the LLM stages call (PERSONA_HUB_LLM_BASE_URL).

Everything that differs per deployment is a CDK context value (`-c key=value`) read into `PersonaHubSettings`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import (
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct

REPO_ROOT = Path(__file__).resolve().parents[2]

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

_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repo>[^:@]+)[:@](?P<ref>.+)$"
)
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


class PersonaHubStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: PersonaHubSettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        cdk.Tags.of(self).add("project", "persona-hub")

        self.key = self._kms_key()
        self.vpc = self._vpc()
        self.log_bucket, self.bucket = self._buckets()
        self.services_sg = ec2.SecurityGroup(
            self,
            "DagsterServicesSg",
            vpc=self.vpc,
            description="Dagster code server, webserver, daemon and every run task",
            allow_all_outbound=True,
        )
        self.services_sg.add_ingress_rule(
            self.services_sg, ec2.Port.tcp(CODE_SERVER_PORT), "gRPC code server, from the Dagster tasks"
        )
        self.db = self._database()
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.namespace = servicediscovery.PrivateDnsNamespace(
            self, "Namespace", name=NAMESPACE, vpc=self.vpc, description="persona-hub service discovery"
        )
        self.llm_api_key = self._llm_api_key()
        self.vllm_alb = self._vllm()
        self._dagster()
        self._cdk_internals()

    def _cdk_internals(self) -> None:
        """Suppressions for the Lambda CDK itself adds (restrict_default_security_group's custom resource)."""
        provider = self.node.try_find_child("Custom::VpcRestrictDefaultSGCustomResourceProvider")
        if provider is None:
            return
        reason = (
            "CDK's deploy-time custom resource that strips the default security group's rules: invoked only by "
            "CloudFormation during a deployment (a failure fails the deployment), calls only the EC2 API."
        )
        _checkov_skip(
            provider.node.find_child("Handler"),
            ("CKV_AWS_115", reason),
            ("CKV_AWS_116", reason),
            ("CKV_AWS_117", reason),
        )

    # --- encryption, network, storage ----------------------------------------------------------------------------

    def _kms_key(self) -> kms.Key:
        key = kms.Key(
            self,
            "Key",
            description="persona-hub: tables bucket, secrets, RDS storage, log groups",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # CloudWatch Logs encrypts the stack's log groups with this key (it needs the grant in the key policy).
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal(f"logs.{self.region}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"],  # in a key policy "*" is this key
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": self.format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )
        return key

    def _log_group(self, construct_id: str, name: str | None = None) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            construct_id,
            log_group_name=name,
            retention=RETENTION[self.settings.log_retention_days],
            encryption_key=self.key,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _vpc(self) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=self.settings.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20),
                ec2.SubnetConfiguration(name="db", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24),
            ],
            # A custom resource (a Lambda) that strips the default security group's rules.
            restrict_default_security_group=True,
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(self._log_group("FlowLogGroup")),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        # S3 traffic (the tables) stays off the NAT gateway.
        vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3)
        return vpc

    def _buckets(self) -> tuple[s3.Bucket, s3.Bucket]:
        log_bucket = s3.Bucket(
            self,
            "AccessLogBucket",
            # ALB access logs and S3 server access logs can only be written to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[
                s3.LifecycleRule(
                    expiration=Duration.days(self.settings.log_retention_days),
                    noncurrent_version_expiration=Duration.days(7),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )
        _checkov_skip(
            log_bucket,
            ("CKV_AWS_18", "This is the access-log bucket itself; logging it into itself would loop."),
        )
        bucket = s3.Bucket(
            self,
            "TablesBucket",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=RemovalPolicy.RETAIN,
            server_access_logs_bucket=log_bucket,
            server_access_logs_prefix="s3/tables/",
            lifecycle_rules=[
                # Delta rewrites files on every compaction/overwrite: old versions are recoverable for a month.
                s3.LifecycleRule(
                    noncurrent_version_expiration=Duration.days(30),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
        )
        return log_bucket, bucket

    def _database(self) -> rds.DatabaseInstance:
        s = self.settings
        db_sg = ec2.SecurityGroup(
            self, "DbSg", vpc=self.vpc, description="Dagster instance Postgres", allow_all_outbound=False
        )
        db_sg.add_ingress_rule(self.services_sg, ec2.Port.tcp(5432), "Postgres, from the Dagster tasks only")
        identifier = f"{self.stack_name}-db".lower()
        # RDS creates /aws/rds/instance/<id>/postgresql itself, unencrypted and kept forever, unless it exists.
        pg_logs = self._log_group("DbLogGroup", f"/aws/rds/instance/{identifier}/postgresql")
        upgrade_logs = self._log_group("DbUpgradeLogGroup", f"/aws/rds/instance/{identifier}/upgrade")
        db = rds.DatabaseInstance(
            self,
            "Db",
            instance_identifier=identifier,
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16),
            instance_type=ec2.InstanceType(s.db_instance),
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[db_sg],
            database_name=DB_NAME,
            credentials=rds.Credentials.from_generated_secret(
                DB_USER, secret_name=f"{self.stack_name}/db", encryption_key=self.key
            ),
            storage_encrypted=True,
            storage_encryption_key=self.key,
            storage_type=rds.StorageType.GP3,
            allocated_storage=s.db_storage_gib,
            max_allocated_storage=s.db_storage_gib * 4,
            publicly_accessible=False,
            multi_az=s.db_multi_az,
            backup_retention=Duration.days(7),
            deletion_protection=True,
            removal_policy=RemovalPolicy.SNAPSHOT,
            auto_minor_version_upgrade=True,
            iam_authentication=True,
            monitoring_interval=Duration.seconds(60),
            enable_performance_insights=True,
            performance_insight_encryption_key=self.key,
            cloudwatch_logs_exports=["postgresql", "upgrade"],
            copy_tags_to_snapshot=True,
        )
        db.node.add_dependency(pg_logs, upgrade_logs)
        return db

    def _llm_api_key(self) -> secretsmanager.ISecret | None:
        choice = self.settings.llm_api_key
        if not choice:
            return None
        if choice == "generate":
            secret = secretsmanager.Secret(
                self,
                "LlmApiKey",
                description="API key between the Dagster tasks and the vLLM servers",
                encryption_key=self.key,
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    exclude_punctuation=True, password_length=48
                ),
            )
            return secret
        return secretsmanager.Secret.from_secret_complete_arn(self, "LlmApiKey", choice)

    # --- the vLLM fleet ------------------------------------------------------------------------------------------

    def _vllm(self) -> elbv2.ApplicationLoadBalancer:
        s = self.settings
        alb_sg = ec2.SecurityGroup(
            self, "VllmAlbSg", vpc=self.vpc, description="vLLM internal load balancer", allow_all_outbound=False
        )
        alb_sg.add_ingress_rule(self.services_sg, ec2.Port.tcp(80), "OpenAI-compatible API, from the Dagster tasks")
        task_sg = ec2.SecurityGroup(self, "VllmTaskSg", vpc=self.vpc, description="vLLM server tasks")
        task_sg.add_ingress_rule(alb_sg, ec2.Port.tcp(VLLM_PORT), "vLLM, from its load balancer only")
        alb_sg.add_egress_rule(task_sg, ec2.Port.tcp(VLLM_PORT), "to the vLLM tasks")

        instance_sg = ec2.SecurityGroup(
            self, "GpuInstanceSg", vpc=self.vpc, description="GPU container instances (no inbound)"
        )
        instance_role = iam.Role(self, "GpuInstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
        launch_template = ec2.LaunchTemplate(
            self,
            "GpuLaunchTemplate",
            machine_image=ecs.EcsOptimizedImage.amazon_linux2(ecs.AmiHardwareType.GPU),
            instance_type=ec2.InstanceType(s.gpu_instance_type),
            role=instance_role,
            security_group=instance_sg,
            user_data=ec2.UserData.for_linux(),
            require_imdsv2=True,
            http_put_response_hop_limit=1,
            block_devices=[
                # The model weights (Hugging Face cache) and the vLLM image live on the root volume.
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(200, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
                )
            ],
        )
        asg = autoscaling.AutoScalingGroup(
            self,
            "GpuAsg",
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            launch_template=launch_template,
            min_capacity=0,
            # Room for a rolling deployment (a new replica starts before the old one stops).
            max_capacity=max(1, s.vllm_replicas) * 2,
        )
        capacity = ecs.AsgCapacityProvider(
            self,
            "GpuCapacity",
            auto_scaling_group=asg,
            enable_managed_termination_protection=True,
            enable_managed_draining=True,
            machine_image_type=ecs.MachineImageType.AMAZON_LINUX_2,
        )
        self.cluster.add_asg_capacity_provider(capacity)
        _checkov_skip(
            instance_role.node.find_child("DefaultPolicy"),
            (
                "CKV_AWS_111",
                "CDK's ECS container-instance policy (narrower than AWS's AmazonEC2ContainerServiceforEC2Role): "
                "ecs:DiscoverPollEndpoint and ecr:GetAuthorizationToken support no resource scoping, the agent's "
                "log writes go to per-task streams, and the ecs:* writes are scoped to this cluster.",
            ),
        )
        # Tasks in awsvpc mode must not reach the instance's metadata (and so its role).
        asg.add_user_data("echo ECS_AWSVPC_BLOCK_IMDS=true >> /etc/ecs/ecs.config")

        task = ecs.Ec2TaskDefinition(
            self,
            "VllmTask",
            network_mode=ecs.NetworkMode.AWS_VPC,
            execution_role=self._execution_role("VllmExecutionRole"),
            task_role=iam.Role(self, "VllmTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com")),
            volumes=[ecs.Volume(name="hf-cache", host=ecs.Host(source_path="/opt/hf-cache"))],
        )
        secrets: dict[str, ecs.Secret] = {}
        if self.llm_api_key is not None:
            secrets["VLLM_API_KEY"] = ecs.Secret.from_secrets_manager(self.llm_api_key)
        if s.hf_token_secret_arn:
            hf = secretsmanager.Secret.from_secret_complete_arn(self, "HfToken", s.hf_token_secret_arn)
            secrets["HF_TOKEN"] = ecs.Secret.from_secrets_manager(hf)
        linux = ecs.LinuxParameters(self, "VllmLinux", shared_memory_size=4096)
        container = task.add_container(
            "vllm",
            image=ecs.ContainerImage.from_registry(s.vllm_image),
            # The same flags as the managed `vllm serve` of the vllm backend (lib/llm/backends/managed_server.py).
            entry_point=["vllm", "serve"],
            command=[
                s.vllm_model,
                "--host",
                "0.0.0.0",
                "--port",
                str(VLLM_PORT),
                "--max-num-seqs",
                "256",
                "--gpu-memory-utilization",
                "0.90",
                "--max-model-len",
                str(s.vllm_max_model_len),
                "--enable-prefix-caching",
            ],
            gpu_count=1,
            memory_reservation_mib=s.vllm_memory_mib,
            linux_parameters=linux,
            secrets=secrets or None,
            environment={"HF_HOME": "/root/.cache/huggingface"},
            port_mappings=[ecs.PortMapping(container_port=VLLM_PORT)],
            logging=ecs.LogDriver.aws_logs(stream_prefix="vllm", log_group=self._log_group("VllmLogGroup")),
            health_check=ecs.HealthCheck(
                command=[
                    "CMD-SHELL",
                    'python3 -c "import urllib.request; '
                    f"urllib.request.urlopen('http://127.0.0.1:{VLLM_PORT}/health', timeout=5)\"",
                ],
                interval=Duration.seconds(30),
                timeout=Duration.seconds(10),
                retries=5,
                # Downloading and loading the weights comes first.
                start_period=Duration.seconds(300),
            ),
        )
        container.add_mount_points(
            ecs.MountPoint(container_path="/root/.cache/huggingface", source_volume="hf-cache", read_only=False)
        )
        service = ecs.Ec2Service(
            self,
            "VllmService",
            cluster=self.cluster,
            task_definition=task,
            desired_count=s.vllm_replicas,
            security_groups=[task_sg],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            capacity_provider_strategies=[
                ecs.CapacityProviderStrategy(capacity_provider=capacity.capacity_provider_name, weight=1)
            ],
            placement_constraints=[ecs.PlacementConstraint.distinct_instances()],
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            health_check_grace_period=Duration.minutes(15),
        )

        alb = elbv2.ApplicationLoadBalancer(
            self,
            "VllmAlb",
            vpc=self.vpc,
            internet_facing=False,
            security_group=alb_sg,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            drop_invalid_header_fields=True,
            deletion_protection=True,
            # Long generations (guided JSON, many tokens) hold a request open.
            idle_timeout=Duration.seconds(600),
        )
        alb.log_access_logs(self.log_bucket, prefix="alb/vllm")
        listener = alb.add_listener("Http", port=80, open=False, protocol=elbv2.ApplicationProtocol.HTTP)
        listener.add_targets(
            "Vllm",
            port=VLLM_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[service],
            health_check=elbv2.HealthCheck(
                path="/health", healthy_http_codes="200", interval=Duration.seconds(30), unhealthy_threshold_count=5
            ),
            deregistration_delay=Duration.seconds(60),
        )
        _checkov_skip(
            listener,
            (
                "CKV_AWS_2",
                "Internal-only listener (scheme internal, security group: the Dagster tasks' group only) inside "
                "the VPC; vLLM serves plain HTTP; an API key can be required (llm_api_key=generate).",
            ),
            ("CKV_AWS_103", "No TLS on this internal HTTP listener (see CKV_AWS_2)."),
        )
        return alb

    # --- Dagster -------------------------------------------------------------------------------------------------

    def _execution_role(self, construct_id: str) -> iam.Role:
        """Used by the ECS agent to pull the image, write logs and inject secrets (never by application code)."""
        return iam.Role(self, construct_id, assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"))

    def _container_image(self) -> tuple[ecs.ContainerImage, str]:
        s = self.settings
        if s.build_image:
            asset = ecr_assets.DockerImageAsset(
                self,
                "Image",
                directory=str(REPO_ROOT),
                file="infra/Dockerfile",
                platform=ecr_assets.Platform.LINUX_AMD64,
                exclude=[".venv", ".git", ".dagster_home", ".persona_hub", ".test-artifacts", "infra/cdk/cdk.out"],
            )
            return ecs.ContainerImage.from_docker_image_asset(asset), asset.image_uri
        match = _ECR_IMAGE.match(s.image)
        if match:
            # An ECR image: the execution role gets pull rights on that repository only.
            repository = ecr.Repository.from_repository_attributes(
                self,
                "ImageRepository",
                repository_arn=f"arn:{self.partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}",
                repository_name=match["repo"],
            )
            return ecs.ContainerImage.from_ecr_repository(repository, match["ref"]), s.image
        return ecs.ContainerImage.from_registry(s.image), s.image

    def _s3_statements(self, *, write: bool, prefix: str = BUCKET_PREFIX) -> list[iam.PolicyStatement]:
        """Object access under `prefix/` only, listing only under it, and the bucket key's use for it."""
        object_actions = ["s3:GetObject", "s3:GetObjectVersion"]
        kms_actions = ["kms:Decrypt"]
        if write:
            object_actions += [
                "s3:PutObject",
                "s3:DeleteObject",
                "s3:AbortMultipartUpload",
                "s3:ListMultipartUploadParts",
            ]
            kms_actions += ["kms:GenerateDataKey", "kms:Encrypt"]
        return [
            iam.PolicyStatement(actions=object_actions, resources=[self.bucket.arn_for_objects(f"{prefix}/*")]),
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
            ),
            iam.PolicyStatement(
                actions=kms_actions,
                resources=[self.key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{self.region}.amazonaws.com"}},
            ),
        ]

    def _ecs_arn(self, resource: str, name: str) -> str:
        return self.format_arn(
            service="ecs", resource=resource, resource_name=name, arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME
        )

    def _run_task_definition_arn(self) -> str:
        return self._ecs_arn("task-definition", f"{self.settings.run_task_family_prefix}_*")

    def _cluster_tasks_arn(self) -> str:
        return self._ecs_arn("task", f"{self.cluster.cluster_name}/*")

    def _pass_role_statement(self, *roles: iam.IRole) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            actions=["iam:PassRole"],
            resources=[role.role_arn for role in roles],
            conditions={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        )

    def _run_task_statement(self) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            actions=["ecs:RunTask"],
            resources=[self._run_task_definition_arn()],
            conditions={"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}},
        )

    def _watch_tasks_statement(self) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            actions=["ecs:DescribeTasks", "ecs:StopTask"],
            resources=[self._cluster_tasks_arn()],
            conditions={"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}},
        )

    def _dagster(self) -> None:
        s = self.settings
        image, image_uri = self._container_image()
        execution_role = self._execution_role("DagsterExecutionRole")

        # The role of every run task (and of the code server, which evaluates sensors and schedules): the bucket
        # prefix, and starting run/step tasks of its own family on its own cluster.
        run_role = iam.Role(
            self,
            "RunTaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="persona-hub: every Dagster run task and the code server",
        )
        for statement in self._s3_statements(write=True):
            run_role.add_to_policy(statement)
        run_role.add_to_policy(self._run_task_statement())
        # RunTask of a task definition that names roles needs PassRole on exactly those roles.
        run_role.add_to_policy(self._pass_role_statement(run_role, execution_role))

        daemon_role = iam.Role(
            self,
            "DaemonTaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="persona-hub: the Dagster daemon (launches each run as an ECS task)",
        )
        daemon_role.add_to_policy(self._run_task_statement())
        daemon_role.add_to_policy(self._watch_tasks_statement())
        daemon_role.add_to_policy(
            iam.PolicyStatement(
                actions=["ecs:TagResource"],
                resources=[self._cluster_tasks_arn()],
                conditions={"StringEquals": {"ecs:CreateAction": "RunTask"}},
            )
        )
        daemon_role.add_to_policy(
            iam.PolicyStatement(
                # ECS supports no resource-level permissions for these two actions: "*" is the only valid
                # resource (https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazonelasticcontainerservice.html).
                # EcsRunLauncher reads its own task's definition and registers one per job from it.
                actions=["ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition"],
                resources=["*"],
            )
        )
        daemon_role.add_to_policy(
            iam.PolicyStatement(
                # Read-only, no resource-level permissions either: the run task's ENI (its private IP).
                actions=["ec2:DescribeNetworkInterfaces"],
                resources=["*"],
            )
        )
        daemon_role.add_to_policy(self._pass_role_statement(run_role, execution_role))
        # Step logs of runs (read back for the UI and for failure reports); compute logs are the daemon's to read.
        for statement in self._s3_statements(write=False, prefix=f"{BUCKET_PREFIX}/_logs"):
            daemon_role.add_to_policy(statement)

        webserver_role = iam.Role(
            self,
            "WebserverTaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="persona-hub: the Dagster webserver (reads step logs, terminates runs)",
        )
        for statement in self._s3_statements(write=False, prefix=f"{BUCKET_PREFIX}/_logs"):
            webserver_role.add_to_policy(statement)
        # "Terminate" in the UI stops the run's task.
        webserver_role.add_to_policy(self._watch_tasks_statement())

        log_group = self._log_group("DagsterLogGroup")
        # Failure reports of run tasks quote their last log lines.
        log_group.grant_read(daemon_role)
        self.db.secret.grant_read(daemon_role)

        environment = {
            "DAGSTER_HOME": DAGSTER_HOME,
            "DAGSTER_PG_HOST": self.db.db_instance_endpoint_address,
            "DAGSTER_PG_PORT": self.db.db_instance_endpoint_port,
            "DAGSTER_PG_DB": DB_NAME,
            "DAGSTER_PG_USER": DB_USER,
            "DAGSTER_MAX_CONCURRENT_RUNS": str(s.max_concurrent_runs),
            "DAGSTER_CODE_SERVER_HOST": f"code-server.{NAMESPACE}",
            "DAGSTER_CODE_SERVER_PORT": str(CODE_SERVER_PORT),
            "PERSONA_HUB_BUCKET": self.bucket.bucket_name,
            "PERSONA_HUB_LOG_PREFIX": f"{BUCKET_PREFIX}/_logs",
            "PERSONA_HUB_STORAGE": f"s3://{self.bucket.bucket_name}/{BUCKET_PREFIX}/delta",
            "PERSONA_HUB_SOURCE": f"s3://{self.bucket.bucket_name}/{BUCKET_PREFIX}/corpus",
            "PERSONA_HUB_LLM_BACKEND": "vllm",
            "PERSONA_HUB_LLM_BASE_URL": f"http://{self.vllm_alb.load_balancer_dns_name}/v1",
            "PERSONA_HUB_LLM_MODEL": s.vllm_model,
            "PERSONA_HUB_POOL_LIMITS": s.pool_limits,
            "PERSONA_HUB_LLM_RUN_CPU": str(s.llm_run_cpu),
            "PERSONA_HUB_LLM_RUN_MEMORY": str(s.llm_run_memory),
            "PERSONA_HUB_SANDBOX": s.sandbox,
            "AWS_REGION": self.region,
            **({"PERSONA_HUB_STAGE_SETTINGS": s.stage_settings} if s.stage_settings else {}),
        }
        secrets = {"DAGSTER_PG_PASSWORD": ecs.Secret.from_secrets_manager(self.db.secret, "password")}
        if self.llm_api_key is not None:
            secrets["PERSONA_HUB_LLM_API_KEY"] = ecs.Secret.from_secrets_manager(self.llm_api_key)

        def service(
            name: str,
            *,
            role: iam.IRole,
            cpu: int,
            memory: int,
            port: int | None = None,
            extra_env: dict[str, str] | None = None,
            health: list[str] | None = None,
            **service_kwargs: Any,
        ) -> ecs.FargateService:
            task = ecs.FargateTaskDefinition(
                self,
                f"{_camel(name)}Task",
                family=f"{self.stack_name}-{name}",
                cpu=cpu,
                memory_limit_mib=memory,
                execution_role=execution_role,
                task_role=role,
                runtime_platform=ecs.RuntimePlatform(
                    cpu_architecture=ecs.CpuArchitecture.X86_64,
                    operating_system_family=ecs.OperatingSystemFamily.LINUX,
                ),
            )
            task.add_container(
                name,
                image=image,
                command=[ENTRYPOINT, name],
                environment={**environment, **(extra_env or {})},
                secrets=secrets,
                port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
                logging=ecs.LogDriver.aws_logs(stream_prefix=name, log_group=log_group),
                health_check=ecs.HealthCheck(command=["CMD-SHELL", *health], start_period=Duration.seconds(120))
                if health
                else None,
                stop_timeout=Duration.seconds(60),
            )
            return ecs.FargateService(
                self,
                f"{_camel(name)}Service",
                cluster=self.cluster,
                task_definition=task,
                desired_count=1,
                security_groups=[self.services_sg],
                vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                assign_public_ip=False,
                platform_version=ecs.FargatePlatformVersion.LATEST,
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
                **service_kwargs,
            )

        # The code server tells the daemon which image and roles a run gets (dagster's --container-image and
        # --container-context, read from these variables): the run task role, not the daemon's.
        container_context = self.to_json_string(
            {
                "ecs": {
                    "task_role_arn": run_role.role_arn,
                    "execution_role_arn": execution_role.role_arn,
                    "run_resources": {"cpu": str(s.run_cpu), "memory": str(s.run_memory)},
                }
            }
        )
        self.code_server = service(
            "code-server",
            role=run_role,
            cpu=1024,
            memory=4096,
            port=CODE_SERVER_PORT,
            extra_env={"DAGSTER_CONTAINER_IMAGE": image_uri, "DAGSTER_CONTAINER_CONTEXT": container_context},
            health=[f"dagster api grpc-health-check --port {CODE_SERVER_PORT} || exit 1"],
            cloud_map_options=ecs.CloudMapOptions(
                name="code-server",
                cloud_map_namespace=self.namespace,
                dns_record_type=servicediscovery.DnsRecordType.A,
                dns_ttl=Duration.seconds(10),
            ),
            min_healthy_percent=100,
            max_healthy_percent=200,
        )
        self.webserver = service(
            "webserver",
            role=webserver_role,
            cpu=1024,
            memory=2048,
            port=WEBSERVER_PORT,
            min_healthy_percent=100,
            max_healthy_percent=200,
            health_check_grace_period=Duration.seconds(120),
        )
        # Never two daemons at once: a deployment stops the old one before starting the new one.
        self.daemon = service(
            "daemon", role=daemon_role, cpu=1024, memory=2048, min_healthy_percent=0, max_healthy_percent=100
        )
        self._webserver_alb()

        cdk.CfnOutput(self, "WebserverUrl", value=self.webserver_url)
        cdk.CfnOutput(self, "LlmBaseUrl", value=environment["PERSONA_HUB_LLM_BASE_URL"])
        cdk.CfnOutput(self, "Bucket", value=self.bucket.bucket_name)
        cdk.CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        self.run_role, self.daemon_role, self.execution_role = run_role, daemon_role, execution_role

    def _webserver_alb(self) -> None:
        s = self.settings
        alb_sg = ec2.SecurityGroup(
            self,
            "WebserverAlbSg",
            vpc=self.vpc,
            description="Dagster webserver load balancer",
            allow_all_outbound=False,
        )
        peer = ec2.Peer.ipv4(s.webserver_allowed_cidr or self.vpc.vpc_cidr_block)
        alb = elbv2.ApplicationLoadBalancer(
            self,
            "WebserverAlb",
            vpc=self.vpc,
            internet_facing=s.public_webserver,
            security_group=alb_sg,
            vpc_subnets=ec2.SubnetSelection(
                subnet_type=ec2.SubnetType.PUBLIC if s.public_webserver else ec2.SubnetType.PRIVATE_WITH_EGRESS
            ),
            drop_invalid_header_fields=True,
            deletion_protection=True,
        )
        alb.log_access_logs(self.log_bucket, prefix="alb/webserver")
        target = {
            "port": WEBSERVER_PORT,
            "protocol": elbv2.ApplicationProtocol.HTTP,
            "targets": [self.webserver],
            "health_check": elbv2.HealthCheck(path="/server_info", healthy_http_codes="200"),
        }
        if s.certificate_arn:
            alb_sg.add_ingress_rule(peer, ec2.Port.tcp(443), "HTTPS to the Dagster UI")
            alb_sg.add_ingress_rule(peer, ec2.Port.tcp(80), "HTTP, redirected to HTTPS")
            listener = alb.add_listener(
                "Https",
                port=443,
                open=False,
                protocol=elbv2.ApplicationProtocol.HTTPS,
                certificates=[acm.Certificate.from_certificate_arn(self, "Certificate", s.certificate_arn)],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            )
            alb.add_redirect(source_port=80, target_port=443, open=False)
            self.webserver_url = f"https://{alb.load_balancer_dns_name}"
        else:
            alb_sg.add_ingress_rule(peer, ec2.Port.tcp(80), "HTTP to the Dagster UI, from the VPC's range")
            listener = alb.add_listener("Http", port=80, open=False, protocol=elbv2.ApplicationProtocol.HTTP)
            _checkov_skip(
                listener,
                (
                    "CKV_AWS_2",
                    "Internal ALB (scheme internal, ingress from the VPC range only) without a certificate; "
                    "certificate_arn switches it to HTTPS, and a public ALB requires one.",
                ),
                ("CKV_AWS_103", "No TLS on this internal HTTP listener (see CKV_AWS_2)."),
            )
            self.webserver_url = f"http://{alb.load_balancer_dns_name}"
        listener.add_targets("Webserver", **target)
        self.webserver_alb = alb


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def _checkov_skip(construct: Construct, *skips: tuple[str, str]) -> None:
    """Record checkov suppressions, each with its reason, in the resource's CloudFormation Metadata."""
    resource = construct.node.default_child if not isinstance(construct, cdk.CfnResource) else construct
    assert isinstance(resource, cdk.CfnResource), construct
    existing = resource.cfn_options.metadata or {}
    entries = existing.get("checkov", {}).get("skip", [])
    entries += [{"id": check, "comment": comment} for check, comment in skips]
    resource.cfn_options.metadata = {**existing, "checkov": {"skip": entries}}


__all__ = ["PersonaHubSettings", "PersonaHubStack"]
