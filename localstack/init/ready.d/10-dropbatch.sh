#!/usr/bin/env bash
# LocalStack ready hook (/etc/localstack/init/ready.d): create what dropbatch expects.
#
# The same resources as `dropbatch bootstrap` (dropbatch/bootstrap.py), plus the bucket
# settings of terraform/modules/dropbatch: three versioned, encrypted, non-public buckets
# with lifecycle rules; the intake queue with its dead-letter queue (5 receives); the queue
# policy; the inbox → queue notification for keys ending in /manifest.json. Idempotent.
#
# Inside the LocalStack container it uses `awslocal`; elsewhere pass the CLI and endpoint:
#   DROPBATCH_AWS_CLI="aws --endpoint-url http://127.0.0.1:4566" localstack/init/ready.d/10-dropbatch.sh
set -euo pipefail

read -r -a AWS <<< "${DROPBATCH_AWS_CLI:-awslocal}"
REGION="${DROPBATCH_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}"
INBOX="${DROPBATCH_INBOX_BUCKET:-dropbatch-inbox}"
OUTBOX="${DROPBATCH_OUTBOX_BUCKET:-dropbatch-outbox}"
CONTROL="${DROPBATCH_CONTROL_BUCKET:-dropbatch-control}"
QUEUE="${DROPBATCH_QUEUE_NAME:-dropbatch-intake}"
INBOX_DAYS="${DROPBATCH_INBOX_EXPIRATION_DAYS:-30}"
OUTBOX_DAYS="${DROPBATCH_OUTBOX_EXPIRATION_DAYS:-30}"
export AWS_DEFAULT_REGION="$REGION" AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"

aws_() { "${AWS[@]}" "$@"; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

lifecycle() {  # lifecycle <expiration days, 0 = never>
    local expire=""
    if (( $1 > 0 )); then
        expire=",{\"ID\":\"expire-objects\",\"Status\":\"Enabled\",\"Filter\":{},\"Expiration\":{\"Days\":$1}}"
    fi
    printf '{"Rules":[%s,%s%s]}' \
        '{"ID":"abort-incomplete-multipart","Status":"Enabled","Filter":{},"AbortIncompleteMultipartUpload":{"DaysAfterInitiation":2}}' \
        '{"ID":"expire-noncurrent-versions","Status":"Enabled","Filter":{},"NoncurrentVersionExpiration":{"NoncurrentDays":7}}' \
        "$expire"
}

for pair in "$INBOX:$INBOX_DAYS" "$OUTBOX:$OUTBOX_DAYS" "$CONTROL:0"; do
    bucket="${pair%%:*}" days="${pair##*:}"
    if ! aws_ s3api head-bucket --bucket "$bucket" >/dev/null 2>&1; then
        if [[ "$REGION" == "us-east-1" ]]; then
            aws_ s3api create-bucket --bucket "$bucket" >/dev/null
        else
            aws_ s3api create-bucket --bucket "$bucket" \
                --create-bucket-configuration "LocationConstraint=$REGION" >/dev/null
        fi
    fi
    aws_ s3api put-bucket-versioning --bucket "$bucket" --versioning-configuration Status=Enabled
    aws_ s3api put-bucket-encryption --bucket "$bucket" --server-side-encryption-configuration \
        '{"Rules":[{"ApplyServerSideEncryptionByDefault":{"SSEAlgorithm":"AES256"}}]}'
    aws_ s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
    lifecycle "$days" > "$tmp/lifecycle.json"
    aws_ s3api put-bucket-lifecycle-configuration --bucket "$bucket" \
        --lifecycle-configuration "file://$tmp/lifecycle.json"
done

dlq_url="$(aws_ sqs create-queue --queue-name "$QUEUE-dlq" --query QueueUrl --output text)"
dlq_arn="$(aws_ sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
    --query Attributes.QueueArn --output text)"
cat > "$tmp/queue.json" <<JSON
{"VisibilityTimeout": "120",
 "RedrivePolicy": "{\"deadLetterTargetArn\":\"$dlq_arn\",\"maxReceiveCount\":\"5\"}"}
JSON
queue_url="$(aws_ sqs create-queue --queue-name "$QUEUE" --attributes "file://$tmp/queue.json" \
    --query QueueUrl --output text)"
queue_arn="$(aws_ sqs get-queue-attributes --queue-url "$queue_url" --attribute-names QueueArn \
    --query Attributes.QueueArn --output text)"
policy="{\"Version\":\"2012-10-17\",\"Statement\":[{\"Effect\":\"Allow\",\"Principal\":{\"Service\":\"s3.amazonaws.com\"},\"Action\":\"sqs:SendMessage\",\"Resource\":\"$queue_arn\",\"Condition\":{\"ArnLike\":{\"aws:SourceArn\":\"arn:aws:s3:::$INBOX\"}}}]}"
policy_escaped="${policy//\"/\\\"}"
printf '{"Policy": "%s"}\n' "$policy_escaped" > "$tmp/policy.json"
aws_ sqs set-queue-attributes --queue-url "$queue_url" --attributes "file://$tmp/policy.json"

cat > "$tmp/notification.json" <<JSON
{"QueueConfigurations": [{
  "Id": "dropbatch-manifests",
  "QueueArn": "$queue_arn",
  "Events": ["s3:ObjectCreated:*"],
  "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": "/manifest.json"}]}}
}]}
JSON
aws_ s3api put-bucket-notification-configuration --bucket "$INBOX" \
    --notification-configuration "file://$tmp/notification.json"

echo "dropbatch: buckets $INBOX $OUTBOX $CONTROL; DROPBATCH_QUEUE_URL=$queue_url"
