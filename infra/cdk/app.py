#!/usr/bin/env python3
"""CDK app: `npx aws-cdk@2 synth` / `deploy` from this folder (cdk.json runs `python app.py`).

Settings come from the context (`-c image=... -c vllm_replicas=2`, see persona_hub_stack.PersonaHubSettings);
the account and region from `-c account=... -c region=...` or the CLI's profile (CDK_DEFAULT_ACCOUNT/REGION).
"""

import os

import aws_cdk as cdk
from persona_hub_stack import PersonaHubSettings, PersonaHubStack

app = cdk.App()
settings = PersonaHubSettings.from_context(app.node)
env = cdk.Environment(
    account=app.node.try_get_context("account") or os.environ.get("CDK_DEFAULT_ACCOUNT"),
    # Access logging of the load balancers needs a concrete region (its log-delivery principal differs per region).
    region=app.node.try_get_context("region") or os.environ.get("CDK_DEFAULT_REGION") or "us-east-1",
)
PersonaHubStack(
    app,
    app.node.try_get_context("stack_name") or "PersonaHub",
    settings=settings,
    env=env,
    description="persona-hub-dagster: Dagster on ECS (webserver, daemon, code server, runs), RDS, S3, vLLM on GPU",
)
app.synth()
