"""The GPU model fleet of the PersonaHub stack: an Auto Scaling group of GPU instances (ECS GPU AMI) as a capacity
provider of the cluster, an EC2 service running `vllm serve`, and the internal load balancer in front of it whose
URL the LLM stages call (PERSONA_HUB_LLM_BASE_URL); with the optional API key between the Dagster tasks and vLLM.

Like every part, it creates its resources with the stack itself as their scope, so their logical IDs are those of
the single-stack template deployments were made from (why: persona_hub_stack.py's docstring).
"""

from __future__ import annotations

from aws_cdk import Duration, Stack
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_secretsmanager as secretsmanager
from network_storage import NetworkStorage
from stack_common import VLLM_PORT, PersonaHubSettings, checkov_skip, execution_role


class ModelFleet:
    """vLLM on GPU instances behind an internal ALB that only the Dagster tasks' security group can reach."""

    def __init__(
        self, stack: Stack, settings: PersonaHubSettings, network: NetworkStorage, cluster: ecs.Cluster
    ) -> None:
        self.stack, self.settings, self.network, self.cluster = stack, settings, network, cluster
        # The key the Dagster tasks send and vLLM requires (None: no key).
        self.llm_api_key = self._llm_api_key()
        alb_sg, task_sg = self._security_groups()
        capacity = self._gpu_capacity()
        service = self._service(capacity, task_sg)
        self.alb = self._load_balancer(alb_sg, service)
        # The OpenAI-compatible endpoint of the fleet.
        self.base_url = f"http://{self.alb.load_balancer_dns_name}/v1"

    def _llm_api_key(self) -> secretsmanager.ISecret | None:
        choice = self.settings.llm_api_key
        if not choice:
            return None
        if choice == "generate":
            return secretsmanager.Secret(
                self.stack,
                "LlmApiKey",
                description="API key between the Dagster tasks and the vLLM servers",
                encryption_key=self.network.key,
                generate_secret_string=secretsmanager.SecretStringGenerator(
                    exclude_punctuation=True, password_length=48
                ),
            )
        return secretsmanager.Secret.from_secret_complete_arn(self.stack, "LlmApiKey", choice)

    def _security_groups(self) -> tuple[ec2.SecurityGroup, ec2.SecurityGroup]:
        """The load balancer admits only the Dagster tasks; the vLLM tasks admit only the load balancer."""
        stack, vpc = self.stack, self.network.vpc
        alb_sg = ec2.SecurityGroup(
            stack, "VllmAlbSg", vpc=vpc, description="vLLM internal load balancer", allow_all_outbound=False
        )
        alb_sg.add_ingress_rule(
            self.network.services_sg, ec2.Port.tcp(80), "OpenAI-compatible API, from the Dagster tasks"
        )
        task_sg = ec2.SecurityGroup(stack, "VllmTaskSg", vpc=vpc, description="vLLM server tasks")
        task_sg.add_ingress_rule(alb_sg, ec2.Port.tcp(VLLM_PORT), "vLLM, from its load balancer only")
        alb_sg.add_egress_rule(task_sg, ec2.Port.tcp(VLLM_PORT), "to the vLLM tasks")
        return alb_sg, task_sg

    def _gpu_capacity(self) -> ecs.AsgCapacityProvider:
        """GPU container instances (ECS GPU AMI, IMDSv2, encrypted root volume), added to the cluster."""
        stack, s = self.stack, self.settings
        instance_sg = ec2.SecurityGroup(
            stack, "GpuInstanceSg", vpc=self.network.vpc, description="GPU container instances (no inbound)"
        )
        instance_role = iam.Role(stack, "GpuInstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
        launch_template = ec2.LaunchTemplate(
            stack,
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
            stack,
            "GpuAsg",
            vpc=self.network.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            launch_template=launch_template,
            min_capacity=0,
            # Room for a rolling deployment (a new replica starts before the old one stops).
            max_capacity=max(1, s.vllm_replicas) * 2,
        )
        capacity = ecs.AsgCapacityProvider(
            stack,
            "GpuCapacity",
            auto_scaling_group=asg,
            enable_managed_termination_protection=True,
            enable_managed_draining=True,
            machine_image_type=ecs.MachineImageType.AMAZON_LINUX_2,
        )
        self.cluster.add_asg_capacity_provider(capacity)
        checkov_skip(
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
        return capacity

    def _service(self, capacity: ecs.AsgCapacityProvider, task_sg: ec2.SecurityGroup) -> ecs.Ec2Service:
        """`vllm serve <model>` (one GPU per task, one task per instance), health on /health."""
        stack, s = self.stack, self.settings
        task = ecs.Ec2TaskDefinition(
            stack,
            "VllmTask",
            network_mode=ecs.NetworkMode.AWS_VPC,
            execution_role=execution_role(stack, "VllmExecutionRole"),
            task_role=iam.Role(stack, "VllmTaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com")),
            volumes=[ecs.Volume(name="hf-cache", host=ecs.Host(source_path="/opt/hf-cache"))],
        )
        secrets: dict[str, ecs.Secret] = {}
        if self.llm_api_key is not None:
            secrets["VLLM_API_KEY"] = ecs.Secret.from_secrets_manager(self.llm_api_key)
        if s.hf_token_secret_arn:
            hf = secretsmanager.Secret.from_secret_complete_arn(stack, "HfToken", s.hf_token_secret_arn)
            secrets["HF_TOKEN"] = ecs.Secret.from_secrets_manager(hf)
        linux = ecs.LinuxParameters(stack, "VllmLinux", shared_memory_size=4096)
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
            logging=ecs.LogDriver.aws_logs(stream_prefix="vllm", log_group=self.network.log_group("VllmLogGroup")),
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
        return ecs.Ec2Service(
            stack,
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

    def _load_balancer(self, alb_sg: ec2.SecurityGroup, service: ecs.Ec2Service) -> elbv2.ApplicationLoadBalancer:
        """Internal ALB, port 80 -> the vLLM tasks' 8000, access-logged."""
        alb = elbv2.ApplicationLoadBalancer(
            self.stack,
            "VllmAlb",
            vpc=self.network.vpc,
            internet_facing=False,
            security_group=alb_sg,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            drop_invalid_header_fields=True,
            deletion_protection=True,
            # Long generations (guided JSON, many tokens) hold a request open.
            idle_timeout=Duration.seconds(600),
        )
        alb.log_access_logs(self.network.log_bucket, prefix="alb/vllm")
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
        checkov_skip(
            listener,
            (
                "CKV_AWS_2",
                "Internal-only listener (scheme internal, security group: the Dagster tasks' group only) inside "
                "the VPC; vLLM serves plain HTTP; an API key can be required (llm_api_key=generate).",
            ),
            ("CKV_AWS_103", "No TLS on this internal HTTP listener (see CKV_AWS_2)."),
        )
        return alb
