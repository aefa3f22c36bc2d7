"""Network and storage of the PersonaHub stack: the KMS key, the VPC, the two buckets, the Dagster tasks' security
group and the Dagster instance's database.

Like every part, it creates its resources with the stack itself as their scope, so their logical IDs are those of
the single-stack template deployments were made from (why: persona_hub_stack.py's docstring).
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from stack_common import CODE_SERVER_PORT, DB_NAME, DB_USER, RETENTION, PersonaHubSettings, checkov_skip


class NetworkStorage:
    """The key, the VPC (flow logs, S3 endpoint, default security group stripped), the access-log and tables buckets,
    the security group of every Dagster task, and RDS Postgres for the Dagster instance."""

    def __init__(self, stack: Stack, settings: PersonaHubSettings) -> None:
        self.stack, self.settings = stack, settings
        self.key = self._kms_key()
        self.vpc = self._vpc()
        self.log_bucket, self.bucket = self._buckets()
        # The code server, webserver, daemon and every run task: the only group the database and the model
        # endpoint admit.
        self.services_sg = ec2.SecurityGroup(
            stack,
            "DagsterServicesSg",
            vpc=self.vpc,
            description="Dagster code server, webserver, daemon and every run task",
            allow_all_outbound=True,
        )
        self.services_sg.add_ingress_rule(
            self.services_sg, ec2.Port.tcp(CODE_SERVER_PORT), "gRPC code server, from the Dagster tasks"
        )
        self.db = self._database()
        self._cdk_internals()

    def log_group(self, construct_id: str, name: str | None = None) -> logs.LogGroup:
        """A log group of the stack: encrypted with the key, the configured retention, kept on stack deletion."""
        return logs.LogGroup(
            self.stack,
            construct_id,
            log_group_name=name,
            retention=RETENTION[self.settings.log_retention_days],
            encryption_key=self.key,
            removal_policy=RemovalPolicy.RETAIN,
        )

    def _kms_key(self) -> kms.Key:
        stack = self.stack
        key = kms.Key(
            stack,
            "Key",
            description="persona-hub: tables bucket, secrets, RDS storage, log groups",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.RETAIN,
        )
        # CloudWatch Logs encrypts the stack's log groups with this key (it needs the grant in the key policy).
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"],  # in a key policy "*" is this key
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
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

    def _vpc(self) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self.stack,
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
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(self.log_group("FlowLogGroup")),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        # S3 traffic (the tables) stays off the NAT gateway.
        vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3)
        return vpc

    def _cdk_internals(self) -> None:
        """Suppressions for the Lambda CDK itself adds (restrict_default_security_group's custom resource)."""
        provider = self.stack.node.try_find_child("Custom::VpcRestrictDefaultSGCustomResourceProvider")
        if provider is None:
            return
        reason = (
            "CDK's deploy-time custom resource that strips the default security group's rules: invoked only by "
            "CloudFormation during a deployment (a failure fails the deployment), calls only the EC2 API."
        )
        checkov_skip(
            provider.node.find_child("Handler"),
            ("CKV_AWS_115", reason),
            ("CKV_AWS_116", reason),
            ("CKV_AWS_117", reason),
        )

    def _buckets(self) -> tuple[s3.Bucket, s3.Bucket]:
        log_bucket = s3.Bucket(
            self.stack,
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
        checkov_skip(
            log_bucket,
            ("CKV_AWS_18", "This is the access-log bucket itself; logging it into itself would loop."),
        )
        bucket = s3.Bucket(
            self.stack,
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
        stack, s = self.stack, self.settings
        db_sg = ec2.SecurityGroup(
            stack, "DbSg", vpc=self.vpc, description="Dagster instance Postgres", allow_all_outbound=False
        )
        db_sg.add_ingress_rule(self.services_sg, ec2.Port.tcp(5432), "Postgres, from the Dagster tasks only")
        identifier = f"{stack.stack_name}-db".lower()
        # RDS creates /aws/rds/instance/<id>/postgresql itself, unencrypted and kept forever, unless it exists.
        pg_logs = self.log_group("DbLogGroup", f"/aws/rds/instance/{identifier}/postgresql")
        upgrade_logs = self.log_group("DbUpgradeLogGroup", f"/aws/rds/instance/{identifier}/upgrade")
        db = rds.DatabaseInstance(
            stack,
            "Db",
            instance_identifier=identifier,
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_16),
            instance_type=ec2.InstanceType(s.db_instance),
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            security_groups=[db_sg],
            database_name=DB_NAME,
            credentials=rds.Credentials.from_generated_secret(
                DB_USER, secret_name=f"{stack.stack_name}/db", encryption_key=self.key
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
