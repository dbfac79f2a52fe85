data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  # Known before the queue exists, so its policy can be part of the queue itself.
  intake_queue_arn = "arn:${data.aws_partition.current.partition}:sqs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:${var.queue_name}"
}

resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.queue_name}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "intake" {
  name                       = var.queue_name
  visibility_timeout_seconds = var.queue_visibility_timeout_seconds
  message_retention_seconds  = 345600
  receive_wait_time_seconds  = 20
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.queue_max_receive_count
  })
  # Inline rather than aws_sqs_queue_policy: each queue resource waits ~25 s for its
  # attributes to settle, and a separate policy resource would add one more wait.
  policy = data.aws_iam_policy_document.intake_queue.json
  tags   = var.tags
}

# Gated: against moto the provider waits forever for this attribute to settle.
resource "aws_sqs_queue_redrive_allow_policy" "dead_letter" {
  count = var.enable_redrive_allow_policy ? 1 : 0

  queue_url = aws_sqs_queue.dead_letter.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.intake.arn]
  })
}

data "aws_iam_policy_document" "intake_queue" {
  statement {
    sid       = "InboxManifestEvents"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [local.intake_queue_arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.this["inbox"].arn]
    }
  }
}

