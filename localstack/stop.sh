#!/usr/bin/env bash
# Stop the LocalStack runtime started by localstack/start.sh (its own pid file only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${LOCALSTACK_HOME:-$ROOT/.dropbatch/localstack}"
PID_FILE="$HOME_DIR/localstack.pid"

if [[ ! -f "$PID_FILE" ]]; then
    echo "localstack: not running (no $PID_FILE)" >&2
    exit 0
fi
pid="$(cat "$PID_FILE")"
if kill -0 "$pid" 2>/dev/null; then
    # setsid made it a process-group leader: stop the runtime and its helpers together.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
    for _ in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
fi
rm -f "$PID_FILE"
rm -rf "$HOME_DIR/s3"  # its S3 object files (localstack/run.py); its state is gone with the process
echo "localstack: stopped (pid $pid)" >&2
