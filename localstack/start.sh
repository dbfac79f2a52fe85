#!/usr/bin/env bash
# Start LocalStack's in-process runtime (no Docker) on 127.0.0.1, in the background.
#
#   localstack/start.sh            # S3, SQS, IAM, STS on http://127.0.0.1:4566
#   localstack/stop.sh
#
# First run installs .venv-localstack (localstack/install.sh: Python 3.12+, ~1.5-3 min).
# Knobs: LOCALSTACK_PORT (4566), LOCALSTACK_PYTHON and LOCALSTACK_VENV (see install.sh),
# LOCALSTACK_HOME (state, pid file and log; .dropbatch/localstack), LOCALSTACK_START_TIMEOUT (120 s).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${LOCALSTACK_PORT:-4566}"
VENV="${LOCALSTACK_VENV:-$ROOT/.venv-localstack}"
HOME_DIR="${LOCALSTACK_HOME:-$ROOT/.dropbatch/localstack}"
TIMEOUT="${LOCALSTACK_START_TIMEOUT:-120}"
PID_FILE="$HOME_DIR/localstack.pid"
LOG_FILE="$HOME_DIR/localstack.log"
ENDPOINT="http://127.0.0.1:$PORT"

say() { printf 'localstack: %s\n' "$*" >&2; }

health() { curl -fsS --max-time 2 "$ENDPOINT/_localstack/health" 2>/dev/null; }

mkdir -p "$HOME_DIR"
HOME_DIR="$(cd "$HOME_DIR" && pwd)"  # absolute: the runtime starts inside it
PID_FILE="$HOME_DIR/localstack.pid"
LOG_FILE="$HOME_DIR/localstack.log"
if [[ -f "$PID_FILE" ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    say "already running (pid $(cat "$PID_FILE")) on $ENDPOINT"
    exit 0
fi

LOCALSTACK_VENV="$VENV" "$ROOT/localstack/install.sh"
rm -rf "$HOME_DIR/s3"  # object files of a previous run: its state went with it (no PERSISTENCE)

say "starting on $ENDPOINT (log: $LOG_FILE)"
# hypercorn binds exactly GATEWAY_LISTEN (the default server binds 0.0.0.0); DNS_ADDRESS=0
# keeps LocalStack's DNS server off; SKIP_SSL_CERT_DOWNLOAD and DISABLE_EVENTS keep it offline.
# LOCALSTACK_HOST + SQS_ENDPOINT_STRATEGY=off make queue URLs http://127.0.0.1:<port>/<account>/<name>:
# resolvable here (localhost.localstack.cloud is not) and in the format the Terraform AWS provider parses.
(
    cd "$HOME_DIR"
    exec env \
        GATEWAY_SERVER=hypercorn \
        GATEWAY_LISTEN="127.0.0.1:$PORT" \
        DNS_ADDRESS=0 \
        SERVICES=s3,sqs,iam,sts \
        EAGER_SERVICE_LOADING=1 \
        SKIP_SSL_CERT_DOWNLOAD=1 \
        DISABLE_EVENTS=1 \
        LOCALSTACK_TELEMETRY_DISABLED=1 \
        SQS_ENDPOINT_STRATEGY=off \
        LOCALSTACK_HOST="127.0.0.1:$PORT" \
        FILESYSTEM_ROOT="$HOME_DIR/fs" \
        DROPBATCH_LOCALSTACK_S3_DIR="$HOME_DIR/s3" \
        setsid "$VENV/bin/python" "$ROOT/localstack/run.py"
) >"$LOG_FILE" 2>&1 < /dev/null &
echo $! > "$PID_FILE"

deadline=$(( $(date +%s) + TIMEOUT ))
until health | grep -q '"s3": "\(available\|running\)"'; do
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        say "exited during start; last log lines:"; tail -n 30 "$LOG_FILE" >&2
        rm -f "$PID_FILE"; exit 1
    fi
    if (( $(date +%s) > deadline )); then
        say "not ready after ${TIMEOUT}s; last log lines:"; tail -n 30 "$LOG_FILE" >&2
        exit 1
    fi
    sleep 1
done
say "ready: DROPBATCH_S3_ENDPOINT=$ENDPOINT (pid $(cat "$PID_FILE"))"
