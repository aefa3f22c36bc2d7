"""The IAM roles of the Dagster services and of the runs they launch: the ECS execution role, the run task role
(every run and the code server), the daemon's and the webserver's; each scoped to the bucket prefix, the cluster
and the run task definition families.

Like every part, it creates its resources with the stack itself as their scope, so their logical IDs are those of
the single-stack template deployments were made from (why: persona_hub_stack.py's docstring).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from network_storage import NetworkStorage
from stack_common import BUCKET_PREFIX, PersonaHubSettings, execution_role


class DagsterRoles:
    """`execution` (the ECS agent: pull, logs, secrets), `run` (every run task and the code server), `daemon`
    (launches and watches the runs) and `webserver` (reads step logs, stops a run's task)."""

    def __init__(
        self, stack: Stack, settings: PersonaHubSettings, network: NetworkStorage, cluster: ecs.Cluster
    ) -> None:
        self.stack, self.settings, self.network, self.cluster = stack, settings, network, cluster
        self.execution = execution_role(stack, "DagsterExecutionRole")
        self.run, self.daemon, self.webserver = self._roles()

    def _roles(self) -> tuple[iam.Role, iam.Role, iam.Role]:
        """The run task role (every run and the code server), the daemon's and the webserver's."""
        stack = self.stack
        # The role of every run task (and of the code server, which evaluates sensors and schedules): the bucket
        # prefix, and starting run/step tasks of its own family on its own cluster.
        run_role = iam.Role(
            stack,
            "RunTaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="persona-hub: every Dagster run task and the code server",
        )
        for statement in self._s3_statements(write=True):
            run_role.add_to_policy(statement)
        run_role.add_to_policy(self._run_task_statement())
        # RunTask of a task definition that names roles needs PassRole on exactly those roles.
        run_role.add_to_policy(self._pass_role_statement(run_role, self.execution))

        daemon_role = iam.Role(
            stack,
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
        daemon_role.add_to_policy(self._pass_role_statement(run_role, self.execution))
        # Step logs of runs (read back for the UI and for failure reports); compute logs are the daemon's to read.
        for statement in self._s3_statements(write=False, prefix=f"{BUCKET_PREFIX}/_logs"):
            daemon_role.add_to_policy(statement)

        webserver_role = iam.Role(
            stack,
            "WebserverTaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="persona-hub: the Dagster webserver (reads step logs, terminates runs)",
        )
        for statement in self._s3_statements(write=False, prefix=f"{BUCKET_PREFIX}/_logs"):
            webserver_role.add_to_policy(statement)
        # "Terminate" in the UI stops the run's task.
        webserver_role.add_to_policy(self._watch_tasks_statement())
        return run_role, daemon_role, webserver_role

    def _s3_statements(self, *, write: bool, prefix: str = BUCKET_PREFIX) -> list[iam.PolicyStatement]:
        """Object access under `prefix/` only, listing only under it, and the bucket key's use for it."""
        bucket = self.network.bucket
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
            iam.PolicyStatement(actions=object_actions, resources=[bucket.arn_for_objects(f"{prefix}/*")]),
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}/*"]}},
            ),
            iam.PolicyStatement(
                actions=kms_actions,
                resources=[self.network.key.key_arn],
                conditions={"StringEquals": {"kms:ViaService": f"s3.{self.stack.region}.amazonaws.com"}},
            ),
        ]

    def _cluster_tasks_arn(self) -> str:
        return self._ecs_arn("task", f"{self.cluster.cluster_name}/*")

    def _ecs_arn(self, resource: str, name: str) -> str:
        return self.stack.format_arn(
            service="ecs", resource=resource, resource_name=name, arn_format=cdk.ArnFormat.SLASH_RESOURCE_NAME
        )

    def _pass_role_statement(self, *roles: iam.IRole) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            actions=["iam:PassRole"],
            resources=[role.role_arn for role in roles],
            conditions={"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}},
        )

    def _run_task_statement(self) -> iam.PolicyStatement:
        """RunTask of the run task definition families (`<prefix>_*`), on this cluster only."""
        return iam.PolicyStatement(
            actions=["ecs:RunTask"],
            resources=[self._ecs_arn("task-definition", f"{self.settings.run_task_family_prefix}_*")],
            conditions={"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}},
        )

    def _watch_tasks_statement(self) -> iam.PolicyStatement:
        return iam.PolicyStatement(
            actions=["ecs:DescribeTasks", "ecs:StopTask"],
            resources=[self._cluster_tasks_arn()],
            conditions={"ArnEquals": {"ecs:cluster": self.cluster.cluster_arn}},
        )
