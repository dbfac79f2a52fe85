#!/usr/bin/env bash
# The drop-box, end to end, the way a user does it (run by `make demo`):
# start the local stack serving two models side by side (the two tiny models of
# `make model`, unless DROPBATCH_MODELS or DROPBATCH_MODEL says otherwise), create a
# tenant, upload one sample batch per model with `aws s3 cp` (JSONL first, signed
# manifest last): chat completions on the first model, embeddings on the second.
# Wait with a progress display, then fetch and verify the results and print a short
# summary of each.
#
# Exits 0 only if every batch completed and every request got exactly one result
# or error line. Knobs: DEMO_REQUESTS (default 200, per batch), DEMO_TIMEOUT (seconds
# to wait for a batch, default 1800), DEMO_UP_TIMEOUT (seconds to wait for the stack,
# default 600: the first run builds the tiny models).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"

REQUESTS="${DEMO_REQUESTS:-200}"
BATCH_TIMEOUT="${DEMO_TIMEOUT:-1800}"
UP_TIMEOUT="${DEMO_UP_TIMEOUT:-600}"
STATE_HOME="${DROPBATCH_HOME:-.dropbatch}"
if [[ -z "${DROPBATCH_MODELS:-}" && -z "${DROPBATCH_MODEL:-}" ]]; then
    export DROPBATCH_MODELS="dropbatch-tiny=.dropbatch/models/dropbatch-tiny,dropbatch-tiny-embed=.dropbatch/models/dropbatch-tiny-embed"
fi
# model:endpoint per batch: the first served model answers chat, a second one embeddings
IFS=',' read -r -a SERVED <<<"${DROPBATCH_MODELS:-${DROPBATCH_MODEL_NAME:-dropbatch-tiny}=}"
JOBS=("${SERVED[0]%%=*}:/v1/chat/completions")
if (( ${#SERVED[@]} > 1 )); then
    JOBS+=("${SERVED[1]%%=*}:/v1/embeddings")
fi
STATE_FILE="$STATE_HOME/up.json"
UP_LOG="$STATE_HOME/up.log"
UP_PID=""

say() { printf '\n==> %s\n' "$*" >&2; }
json_field() { python -c 'import json, sys; d = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d = d[k]
print(d)' "$1" "$2"; }

cleanup() {
    local rc=$?
    if [[ -n "$UP_PID" ]] && kill -0 "$UP_PID" 2>/dev/null; then
        say "stopping dropbatch up (pid $UP_PID)"
        kill -TERM "$UP_PID" 2>/dev/null || true
        wait "$UP_PID" 2>/dev/null || true
    fi
    if [[ $rc -ne 0 && -f "$UP_LOG" && -n "$UP_PID" ]]; then
        echo "--- last lines of $UP_LOG ---" >&2
        tail -n 25 "$UP_LOG" >&2 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

# -- 1. the local stack ----------------------------------------------------------------
mkdir -p "$STATE_HOME"
if [[ -f "$STATE_FILE" ]] && kill -0 "$(json_field "$STATE_FILE" pid 2>/dev/null || echo 0)" 2>/dev/null; then
    say "using the dropbatch up that is already running (pid $(json_field "$STATE_FILE" pid))"
else
    say "starting dropbatch up (log: $UP_LOG)"
    dropbatch up >"$UP_LOG" 2>&1 &
    UP_PID=$!
    waited=0
    until [[ -f "$STATE_FILE" ]] && [[ "$(json_field "$STATE_FILE" pid 2>/dev/null)" == "$UP_PID" ]]; do
        if ! kill -0 "$UP_PID" 2>/dev/null; then
            echo "dropbatch up exited before it was ready" >&2
            exit 1
        fi
        if (( waited >= UP_TIMEOUT )); then
            echo "dropbatch up was not ready after ${UP_TIMEOUT}s" >&2
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
fi
S3_ENDPOINT="$(json_field "$STATE_FILE" s3_endpoint)"
INBOX="$(json_field "$STATE_FILE" buckets.inbox)"
# The aws CLI (and our own client commands) talk to the stack's S3 endpoint.
export AWS_ENDPOINT_URL="$S3_ENDPOINT"
export AWS_DEFAULT_REGION="$(json_field "$STATE_FILE" region)"
if [[ "$(json_field "$STATE_FILE" embedded_s3)" == "True" ]]; then
    export AWS_ACCESS_KEY_ID="test" AWS_SECRET_ACCESS_KEY="test"
fi
echo "S3 endpoint $S3_ENDPOINT, inbox s3://$INBOX" >&2

# -- 2. a tenant and its signing key -----------------------------------------------------
TENANT="demo-$(python -c 'import secrets; print(secrets.token_hex(3))')"
WORK="$STATE_HOME/demo/$TENANT"
mkdir -p "$WORK"
say "dropbatch tenant create $TENANT --tier premium"
(umask 077 && dropbatch tenant create "$TENANT" --tier premium --json >"$WORK/key.json")
KEY_ID="$(json_field "$WORK/key.json" key_id)"
echo "tenant $TENANT, signing key $KEY_ID (secret in $WORK/key.json)" >&2

# -- 3. the batches: JSONL first, signed manifest last ---------------------------------------
STAMP="$(date -u +%Y%m%d-%H%M%S)"
NAMES=()
START="$(date +%s.%N)"
for spec in "${JOBS[@]}"; do
    model="${spec%%:*}" endpoint="${spec#*:}"
    job="${endpoint##*/}-$STAMP"
    NAMES+=("$job")
    mkdir -p "$WORK/$job"
    input="$WORK/$job/input.jsonl"  # the manifest names inputs by file name: input.jsonl beside it
    dropbatch sample --n "$REQUESTS" --endpoint "$endpoint" --model "$model" -o "$input" >&2
    prefix="s3://$INBOX/$TENANT/$job"
    say "aws s3 cp $input $prefix/input.jsonl   ($model, $endpoint)"
    aws s3 cp --only-show-errors "$input" "$prefix/input.jsonl"
    say "dropbatch manifest sign $input --tenant $TENANT --job $job --key-id $KEY_ID --model $model"
    DROPBATCH_SIGNING_SECRET="$(json_field "$WORK/key.json" secret)" \
        dropbatch manifest sign "$input" --tenant "$TENANT" --job "$job" --key-id "$KEY_ID" \
        --endpoint "$endpoint" --model "$model" -o "$WORK/$job/manifest.json" >/dev/null
    say "aws s3 cp $WORK/$job/manifest.json $prefix/manifest.json"
    aws s3 cp --only-show-errors "$WORK/$job/manifest.json" "$prefix/manifest.json"
done

# -- 4. wait, with progress, and 5. results, verified -------------------------------------------
failed=0
for job in "${NAMES[@]}"; do
    say "dropbatch status $TENANT/$job --wait"
    dropbatch status "$TENANT/$job" --wait --timeout "$BATCH_TIMEOUT" >/dev/null
    END="$(date +%s.%N)"
    dropbatch status "$TENANT/$job" --json >"$WORK/$job/status.json"
    say "dropbatch results $TENANT/$job --verify $WORK/$job/input.jsonl"
    verified=0
    dropbatch results "$TENANT/$job" --verify "$WORK/$job/input.jsonl" >"$WORK/$job/results.jsonl" || verified=$?

    python - "$WORK/$job/status.json" "$START" "$END" "$WORK/$job/results.jsonl" <<'EOF'
import json, sys

status = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
counts, usage, result = status["request_counts"], status.get("usage") or {}, status.get("result") or {}
generated = usage.get("output_tokens", 0)
print()
print(f"batch {status['id']} ({status['tenant']}/{status['job']}): {status['status']}")
print(f"  model        {status.get('model')}, {status['endpoint']}")
if result:
    print(f"  output       {result['output_uri']}")
    print(f"  errors       {result['errors_uri']}")
    print(f"  local copy   {sys.argv[4]}")
for error in (status.get("errors") or {}).get("data", []):
    print(f"  error        {error['code']}: {error['message']}")
if status.get("rejection"):
    print(f"  rejection    {status['rejection']}")
print(f"  requests     {counts['completed']} completed, {counts['failed']} failed, of {counts['total']}")
print(f"  tokens       {usage.get('input_tokens', 0)} prompt + {generated} generated")
if status.get("in_progress_at") and status.get("completed_at"):
    run = status["completed_at"] - status["in_progress_at"]
    rate = f": {generated / run:,.0f} generated tokens/s" if run > 0 and generated else ""
    print(f"  run time     {run} s from in_progress to completed{rate}")
print(f"  wall time    {wall:.1f} s from the first upload to completion")
EOF
    state="$(json_field "$WORK/$job/status.json" status)"
    if [[ "$state" != "completed" || $verified -ne 0 ]]; then
        echo "demo FAILED: $job: status $state, verification exit code $verified" >&2
        failed=1
    fi
done
if (( failed )); then
    exit 1
fi
echo "demo OK: ${#NAMES[@]} batches on ${#NAMES[@]} models; every request got exactly one result or error line" >&2
