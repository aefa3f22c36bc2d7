#!/usr/bin/env sh
# The one entry point of the image: which Dagster process this container (or test process) is.
#   code-server  the code location over gRPC (`dagster api grpc`); runs are launched from it
#   webserver    the UI and GraphQL, reading the workspace (the code server) and the instance (Postgres)
#   daemon       schedules, sensors, automation, backfills and the run queue; first it migrates the instance
#                schema and applies the pool limits from PERSONA_HUB_POOL_LIMITS
# Anything else is run as a command in the image (e.g. `dagster api execute_run ...`, which EcsRunLauncher sends).
#
# DAGSTER_HOME must hold the instance's dagster.yaml (infra/dagster.yaml in the image). DAGSTER_BIND_HOST (default
# 0.0.0.0) is where servers listen; DAGSTER_CODE_SERVER_HOST/PORT are where the others find the code server.
set -eu

bind=${DAGSTER_BIND_HOST:-0.0.0.0}
code_port=${DAGSTER_CODE_SERVER_PORT:-4000}

# The workspace is the code server's address, written from the environment (workspace files take no variables).
write_workspace() {
  workspace=${DAGSTER_HOME:?DAGSTER_HOME must be set}/workspace.yaml
  cat > "$workspace" <<YAML
load_from:
  - grpc_server:
      host: ${DAGSTER_CODE_SERVER_HOST:-localhost}
      port: ${code_port}
      location_name: persona_hub_dagster
YAML
  echo "$workspace"
}

role=${1:-}
[ $# -gt 0 ] && shift
case "$role" in
  code-server)
    exec dagster api grpc --module-name persona_hub_dagster.definitions --host "$bind" --port "$code_port" "$@"
    ;;
  webserver)
    workspace=$(write_workspace)
    exec dagster-webserver --host "$bind" --port "${DAGSTER_WEBSERVER_PORT:-3000}" --workspace "$workspace" "$@"
    ;;
  daemon)
    workspace=$(write_workspace)
    dagster instance migrate
    # "pool=limit,pool=limit". The persona_hub pool is always 1 (the hub deduplicates each shard against the
    # finished hub of the shards before it): set whether listed or not, and any other value is refused.
    for pair in $(echo "${PERSONA_HUB_POOL_LIMITS:-}" | tr ',' ' ') persona_hub=1; do
      pool=${pair%%=*} limit=${pair#*=}
      if [ "$pool" = persona_hub ] && [ "$limit" != 1 ]; then
        echo "PERSONA_HUB_POOL_LIMITS: persona_hub must be 1, not $limit" >&2
        exit 2
      fi
      dagster instance concurrency set "$pool" "$limit"
    done
    exec dagster-daemon run --workspace "$workspace" "$@"
    ;;
  "")
    echo "usage: $0 code-server|webserver|daemon|<command>" >&2
    exit 2
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
