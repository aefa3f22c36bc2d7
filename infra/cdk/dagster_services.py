"""The Dagster services of the PersonaHub stack: three Fargate services from ONE image (code-server in Cloud Map,
webserver behind its ALB, daemon), their environment and secrets, and their log group; their roles and those of
the run tasks the daemon launches are dagster_roles.py's.

Like every part, it creates its resources with the stack itself as their scope, so their logical IDs are those of
the single-stack template deployments were made from (why: persona_hub_stack.py's docstring).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aws_cdk import Duration, Stack
from aws_cdk import aws_certificatemanager as acm
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_servicediscovery as servicediscovery
from dagster_roles import DagsterRoles
from model_fleet import ModelFleet
from network_storage import NetworkStorage
from stack_common import (
    BUCKET_PREFIX,
    CODE_SERVER_PORT,
    DAGSTER_HOME,
    DB_NAME,
    DB_USER,
    ENTRYPOINT,
    NAMESPACE,
    WEBSERVER_PORT,
    PersonaHubSettings,
    checkov_skip,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com/(?P<repo>[^:@]+)[:@](?P<ref>.+)$"
)


class DagsterServices:
    """code-server, webserver and daemon on Fargate (EcsRunLauncher starts each run as a Fargate task on the same
    cluster, from the daemon's task definition, with the run task role of `roles`) and the webserver's ALB."""

    def __init__(
        self,
        stack: Stack,
        settings: PersonaHubSettings,
        network: NetworkStorage,
        cluster: ecs.Cluster,
        namespace: servicediscovery.PrivateDnsNamespace,
        fleet: ModelFleet,
    ) -> None:
        self.stack, self.settings, self.network, self.cluster = stack, settings, network, cluster
        self.namespace, self.fleet = namespace, fleet
        self.image, self.image_uri = self._container_image()
        self.roles = DagsterRoles(stack, settings, network, cluster)
        self.log_group = network.log_group("DagsterLogGroup")
        # Failure reports of run tasks quote their last log lines.
        self.log_group.grant_read(self.roles.daemon)
        network.db.secret.grant_read(self.roles.daemon)
        self.environment = self._environment()
        self.secrets = {"DAGSTER_PG_PASSWORD": ecs.Secret.from_secrets_manager(network.db.secret, "password")}
        if fleet.llm_api_key is not None:
            self.secrets["PERSONA_HUB_LLM_API_KEY"] = ecs.Secret.from_secrets_manager(fleet.llm_api_key)
        self._services()
        self.webserver_url = self._webserver_alb()

    def _container_image(self) -> tuple[ecs.ContainerImage, str]:
        stack, s = self.stack, self.settings
        if s.build_image:
            asset = ecr_assets.DockerImageAsset(
                stack,
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
                stack,
                "ImageRepository",
                repository_arn=f"arn:{stack.partition}:ecr:{match['region']}:{match['account']}:repository/{match['repo']}",
                repository_name=match["repo"],
            )
            return ecs.ContainerImage.from_ecr_repository(repository, match["ref"]), s.image
        return ecs.ContainerImage.from_registry(s.image), s.image

    def _environment(self) -> dict[str, str]:
        """What every container gets (and the code server passes on to every run)."""
        s, db, bucket = self.settings, self.network.db, self.network.bucket
        return {
            "DAGSTER_HOME": DAGSTER_HOME,
            "DAGSTER_PG_HOST": db.db_instance_endpoint_address,
            "DAGSTER_PG_PORT": db.db_instance_endpoint_port,
            "DAGSTER_PG_DB": DB_NAME,
            "DAGSTER_PG_USER": DB_USER,
            "DAGSTER_MAX_CONCURRENT_RUNS": str(s.max_concurrent_runs),
            "DAGSTER_CODE_SERVER_HOST": f"code-server.{NAMESPACE}",
            "DAGSTER_CODE_SERVER_PORT": str(CODE_SERVER_PORT),
            "PERSONA_HUB_BUCKET": bucket.bucket_name,
            "PERSONA_HUB_LOG_PREFIX": f"{BUCKET_PREFIX}/_logs",
            "PERSONA_HUB_STORAGE": f"s3://{bucket.bucket_name}/{BUCKET_PREFIX}/delta",
            "PERSONA_HUB_SOURCE": f"s3://{bucket.bucket_name}/{BUCKET_PREFIX}/corpus",
            "PERSONA_HUB_LLM_BACKEND": "vllm",
            "PERSONA_HUB_LLM_BASE_URL": self.fleet.base_url,
            "PERSONA_HUB_LLM_MODEL": s.vllm_model,
            "PERSONA_HUB_POOL_LIMITS": s.pool_limits,
            "PERSONA_HUB_LLM_RUN_CPU": str(s.llm_run_cpu),
            "PERSONA_HUB_LLM_RUN_MEMORY": str(s.llm_run_memory),
            "PERSONA_HUB_SANDBOX": s.sandbox,
            "AWS_REGION": self.stack.region,
            **({"PERSONA_HUB_STAGE_SETTINGS": s.stage_settings} if s.stage_settings else {}),
        }

    def _service(
        self,
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
        """One Fargate service of the image, `entrypoint.sh <name>`, in the private subnets."""
        stack = self.stack
        task = ecs.FargateTaskDefinition(
            stack,
            f"{_camel(name)}Task",
            family=f"{stack.stack_name}-{name}",
            cpu=cpu,
            memory_limit_mib=memory,
            execution_role=self.roles.execution,
            task_role=role,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        task.add_container(
            name,
            image=self.image,
            command=[ENTRYPOINT, name],
            environment={**self.environment, **(extra_env or {})},
            secrets=self.secrets,
            port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
            logging=ecs.LogDriver.aws_logs(stream_prefix=name, log_group=self.log_group),
            health_check=ecs.HealthCheck(command=["CMD-SHELL", *health], start_period=Duration.seconds(120))
            if health
            else None,
            stop_timeout=Duration.seconds(60),
        )
        return ecs.FargateService(
            stack,
            f"{_camel(name)}Service",
            cluster=self.cluster,
            task_definition=task,
            desired_count=1,
            security_groups=[self.network.services_sg],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            assign_public_ip=False,
            platform_version=ecs.FargatePlatformVersion.LATEST,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            **service_kwargs,
        )

    def _services(self) -> None:
        s = self.settings
        # The code server tells the daemon which image and roles a run gets (dagster's --container-image and
        # --container-context, read from these variables): the run task role, not the daemon's.
        container_context = self.stack.to_json_string(
            {
                "ecs": {
                    "task_role_arn": self.roles.run.role_arn,
                    "execution_role_arn": self.roles.execution.role_arn,
                    "run_resources": {"cpu": str(s.run_cpu), "memory": str(s.run_memory)},
                }
            }
        )
        self.code_server = self._service(
            "code-server",
            role=self.roles.run,
            cpu=1024,
            memory=4096,
            port=CODE_SERVER_PORT,
            extra_env={"DAGSTER_CONTAINER_IMAGE": self.image_uri, "DAGSTER_CONTAINER_CONTEXT": container_context},
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
        self.webserver = self._service(
            "webserver",
            role=self.roles.webserver,
            cpu=1024,
            memory=2048,
            port=WEBSERVER_PORT,
            min_healthy_percent=100,
            max_healthy_percent=200,
            health_check_grace_period=Duration.seconds(120),
        )
        # Never two daemons at once: a deployment stops the old one before starting the new one.
        self.daemon = self._service(
            "daemon", role=self.roles.daemon, cpu=1024, memory=2048, min_healthy_percent=0, max_healthy_percent=100
        )

    def _webserver_alb(self) -> str:
        """The webserver's ALB (internal unless public_webserver; HTTPS with certificate_arn); returns its URL."""
        stack, s, vpc = self.stack, self.settings, self.network.vpc
        alb_sg = ec2.SecurityGroup(
            stack,
            "WebserverAlbSg",
            vpc=vpc,
            description="Dagster webserver load balancer",
            allow_all_outbound=False,
        )
        peer = ec2.Peer.ipv4(s.webserver_allowed_cidr or vpc.vpc_cidr_block)
        alb = elbv2.ApplicationLoadBalancer(
            stack,
            "WebserverAlb",
            vpc=vpc,
            internet_facing=s.public_webserver,
            security_group=alb_sg,
            vpc_subnets=ec2.SubnetSelection(
                subnet_type=ec2.SubnetType.PUBLIC if s.public_webserver else ec2.SubnetType.PRIVATE_WITH_EGRESS
            ),
            drop_invalid_header_fields=True,
            deletion_protection=True,
        )
        alb.log_access_logs(self.network.log_bucket, prefix="alb/webserver")
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
                certificates=[acm.Certificate.from_certificate_arn(stack, "Certificate", s.certificate_arn)],
                ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            )
            alb.add_redirect(source_port=80, target_port=443, open=False)
            url = f"https://{alb.load_balancer_dns_name}"
        else:
            alb_sg.add_ingress_rule(peer, ec2.Port.tcp(80), "HTTP to the Dagster UI, from the VPC's range")
            listener = alb.add_listener("Http", port=80, open=False, protocol=elbv2.ApplicationProtocol.HTTP)
            checkov_skip(
                listener,
                (
                    "CKV_AWS_2",
                    "Internal ALB (scheme internal, ingress from the VPC range only) without a certificate; "
                    "certificate_arn switches it to HTTPS, and a public ALB requires one.",
                ),
                ("CKV_AWS_103", "No TLS on this internal HTTP listener (see CKV_AWS_2)."),
            )
            url = f"http://{alb.load_balancer_dns_name}"
        listener.add_targets("Webserver", **target)
        self.webserver_alb = alb
        return url


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))
