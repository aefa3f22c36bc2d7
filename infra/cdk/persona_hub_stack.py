"""The production deployment of persona-hub-dagster on AWS: one CDK stack composed of three parts, one per concern.

What it creates (see README.md beside this file):
- network_storage.NetworkStorage: a KMS key; a VPC (2 AZs: public subnets for the NAT gateway(s) and an optional
  public ALB, private subnets with egress for every task, isolated subnets for RDS) with flow logs and an S3 gateway
  endpoint; the tables' bucket (Delta tables, corpus, compute logs under one prefix), KMS-encrypted, versioned,
  private, TLS only, and its access-log bucket; the Dagster tasks' security group; RDS Postgres 16 for the Dagster
  instance (run/event/schedule storage), credentials generated into Secrets Manager;
- the ECS cluster and its Cloud Map namespace (here: both other parts run in them);
- model_fleet.ModelFleet: a GPU fleet (EC2 Auto Scaling group, ECS GPU AMI, capacity provider) running `vllm serve`
  behind an internal ALB: the OpenAI-compatible endpoint the LLM stages call (PERSONA_HUB_LLM_BASE_URL);
- dagster_services.DagsterServices: three Fargate services from ONE image: code-server (gRPC, Cloud Map), webserver
  (behind an ALB, internal unless asked otherwise), daemon (queues runs and launches each one as an ECS task:
  dagster-aws EcsRunLauncher with use_current_ecs_task_config); their IAM roles and those of the runs are
  dagster_roles.DagsterRoles'.

Everything that differs per deployment is a CDK context value (`-c key=value`) read into `PersonaHubSettings`
(stack_common.py, with the constants and helpers the parts share).

Why the parts are plain classes and not `Construct`s: CloudFormation identifies a resource by its logical ID, and
CDK derives that ID from the construct path (`PersonaHub/Db/Resource` -> `DbA1B2C3D4`). Until this split everything
was created directly in the stack; a child construct (`PersonaHub/Storage/Db/...`) would give every resource a new
logical ID, and CloudFormation would replace them on the next deploy: a new, empty database and bucket. Overriding
the logical IDs back (`override_logical_id`) would have to reach every L1 resource the L2 constructs create
(the VPC alone makes dozens: subnets, routes, NAT gateways, the custom resource's Lambda), and would still not cover
the names CDK generates from the same path (e.g. the vLLM task definition's family, the capacity provider's name),
whose change also replaces resources. So each part creates its resources with the stack as their scope: the
template is the one deployments were made from, resource for resource, and test_infra_cdk.py's
`test_logical_ids_are_stable` compares its logical IDs with persona_hub_dagster_tests/snapshots/cdk_logical_ids.json.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_servicediscovery as servicediscovery
from constructs import Construct
from dagster_services import DagsterServices
from model_fleet import ModelFleet
from network_storage import NetworkStorage
from stack_common import NAMESPACE, PersonaHubSettings


class PersonaHubStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, settings: PersonaHubSettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        cdk.Tags.of(self).add("project", "persona-hub")

        self.network = NetworkStorage(self, settings)
        # The Dagster services and runs (Fargate) and the vLLM fleet (its GPU capacity provider) share one cluster;
        # services find each other in its private DNS namespace (code-server.persona-hub.local).
        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=self.network.vpc, container_insights_v2=ecs.ContainerInsights.ENABLED
        )
        self.namespace = servicediscovery.PrivateDnsNamespace(
            self, "Namespace", name=NAMESPACE, vpc=self.network.vpc, description="persona-hub service discovery"
        )
        self.model_fleet = ModelFleet(self, settings, self.network, self.cluster)
        self.dagster = DagsterServices(self, settings, self.network, self.cluster, self.namespace, self.model_fleet)

        cdk.CfnOutput(self, "WebserverUrl", value=self.dagster.webserver_url)
        cdk.CfnOutput(self, "LlmBaseUrl", value=self.model_fleet.base_url)
        cdk.CfnOutput(self, "Bucket", value=self.network.bucket.bucket_name)
        cdk.CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)


__all__ = ["PersonaHubSettings", "PersonaHubStack"]
