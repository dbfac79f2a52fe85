# Least privilege per service, from what each one calls (dropbatch/storage/s3.py, watcher/, runner/, gateway/).
# s3:ListBucket is granted wherever objects are read: without it S3 answers a missing key with
# 403 instead of 404, and dropbatch tells "not there yet" from "not allowed" by that code.

locals {
  arn = { for role, bucket in aws_s3_bucket.this : role => bucket.arn }

  object_write = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
  kms_actions  = ["kms:Decrypt", "kms:GenerateDataKey"]
}

data "aws_iam_policy_document" "service_trust" {
  statement {
    effect = "Allow"
    # TagSession: EKS Pod Identity tags the sessions it opens.
    actions = ["sts:AssumeRole", "sts:TagSession"]

    dynamic "principals" {
      for_each = length(var.service_trust_services) > 0 ? [1] : []
      content {
        type        = "Service"
        identifiers = var.service_trust_services
      }
    }

    dynamic "principals" {
      for_each = length(var.service_trust_arns) > 0 ? [1] : []
      content {
        type        = "AWS"
        identifiers = var.service_trust_arns
      }
    }
  }
}

# Every service keeps records, leases, queue entries and the audit log in control.
data "aws_iam_policy_document" "control" {
  statement {
    sid       = "ControlList"
    actions   = ["s3:ListBucket"]
    resources = [local.arn.control]
  }
  statement {
    sid       = "ControlReadWrite"
    actions   = concat(["s3:GetObject", "s3:DeleteObject"], local.object_write)
    resources = ["${local.arn.control}/*"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "BucketKey"
      actions   = local.kms_actions
      resources = [statement.value]
    }
  }
}

# gateway: /v1/files uploads (<tenant>/.files/) and server-signed manifests under any tenant
# prefix, reads inputs back, serves results from the outbox.
data "aws_iam_policy_document" "gateway" {
  source_policy_documents = [data.aws_iam_policy_document.control.json]

  statement {
    sid       = "BucketsList"
    actions   = ["s3:ListBucket"]
    resources = [local.arn.inbox, local.arn.outbox]
  }
  statement {
    sid       = "InboxReadWrite"
    actions   = concat(["s3:GetObject"], local.object_write)
    resources = ["${local.arn.inbox}/*"]
  }
  statement {
    sid       = "OutboxRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn.outbox}/*"]
  }
  dynamic "statement" {
    for_each = length(var.gateway_job_bucket_arns) > 0 ? [1] : []
    content {
      sid       = "JobBucketsList"
      actions   = ["s3:ListBucket"]
      resources = var.gateway_job_bucket_arns
    }
  }
  dynamic "statement" {
    for_each = length(var.gateway_job_bucket_arns) > 0 ? [1] : []
    content {
      sid       = "JobBucketsReadWrite"
      actions   = concat(["s3:GetObject"], local.object_write)
      resources = [for arn in var.gateway_job_bucket_arns : "${arn}/*"]
    }
  }
}

# watcher: reads manifests and inputs, writes only rejection.json into the inbox, reads
# outbox summaries (identical work is answered from there), consumes the intake queue.
data "aws_iam_policy_document" "watcher" {
  source_policy_documents = [data.aws_iam_policy_document.control.json]

  statement {
    sid       = "BucketsList"
    actions   = ["s3:ListBucket"]
    resources = [local.arn.inbox, local.arn.outbox]
  }
  statement {
    sid       = "InboxRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn.inbox}/*"]
  }
  statement {
    sid       = "InboxRejections"
    actions   = ["s3:PutObject"]
    resources = ["${local.arn.inbox}/*/*/rejection.json"]
  }
  statement {
    sid       = "OutboxRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn.outbox}/*"]
  }
  statement {
    sid = "IntakeQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
    ]
    resources = [aws_sqs_queue.intake.arn]
  }
}

# runner (the Ray driver, and Ray workers, which read input chunks themselves): reads the
# inbox, writes results into the outbox.
data "aws_iam_policy_document" "runner" {
  source_policy_documents = [data.aws_iam_policy_document.control.json]

  statement {
    sid       = "BucketsList"
    actions   = ["s3:ListBucket"]
    resources = [local.arn.inbox, local.arn.outbox]
  }
  statement {
    sid       = "InboxRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn.inbox}/*"]
  }
  statement {
    sid       = "OutboxReadWrite"
    actions   = concat(["s3:GetObject"], local.object_write)
    resources = ["${local.arn.outbox}/*"]
  }
}

locals {
  service_policies = {
    gateway = data.aws_iam_policy_document.gateway.json
    watcher = data.aws_iam_policy_document.watcher.json
    runner  = data.aws_iam_policy_document.runner.json
  }
}

resource "aws_iam_role" "service" {
  for_each = local.service_policies

  name               = "${var.name_prefix}-${each.key}"
  description        = "dropbatch ${each.key}"
  assume_role_policy = data.aws_iam_policy_document.service_trust.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "service" {
  for_each = local.service_policies

  name   = "${var.name_prefix}-${each.key}"
  role   = aws_iam_role.service[each.key].id
  policy = each.value
}

resource "aws_iam_instance_profile" "runner" {
  count = var.enable_instance_profile ? 1 : 0

  name = "${var.name_prefix}-runner"
  role = aws_iam_role.service["runner"].name
  tags = var.tags
}

# Drop-box tenants: write inbox/<tenant>/*, read their own rejections and outbox/<tenant>/*.
data "aws_iam_policy_document" "tenant" {
  for_each = var.tenants

  statement {
    sid       = "ListOwnPrefix"
    actions   = ["s3:ListBucket"]
    resources = [local.arn.inbox, local.arn.outbox]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [each.key, "${each.key}/*"]
    }
  }
  statement {
    sid       = "InboxWriteOwnPrefix"
    actions   = local.object_write
    resources = ["${local.arn.inbox}/${each.key}/*"]
  }
  statement {
    sid       = "InboxReadOwnRejections"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn.inbox}/${each.key}/*/rejection.json"]
  }
  statement {
    sid       = "OutboxReadOwnPrefix"
    actions   = ["s3:GetObject"]
    resources = ["${local.arn.outbox}/${each.key}/*"]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]
    content {
      sid       = "BucketKey"
      actions   = local.kms_actions
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "tenant" {
  for_each = var.tenants

  name        = "${var.name_prefix}-tenant-${each.key}"
  description = "dropbatch drop-box for tenant ${each.key}: inbox/${each.key}/* write, outbox/${each.key}/* read"
  policy      = data.aws_iam_policy_document.tenant[each.key].json
  tags        = var.tags
}

data "aws_iam_policy_document" "tenant_trust" {
  for_each = { for name, tenant in var.tenants : name => tenant if length(tenant.principal_arns) > 0 }

  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = each.value.principal_arns
    }
  }
}

resource "aws_iam_role" "tenant" {
  for_each = data.aws_iam_policy_document.tenant_trust

  name               = "${var.name_prefix}-tenant-${each.key}"
  description        = "dropbatch drop-box principal for tenant ${each.key}"
  assume_role_policy = each.value.json
  tags               = var.tags
}

resource "aws_iam_role_policy_attachment" "tenant" {
  for_each = aws_iam_role.tenant

  role       = each.value.name
  policy_arn = aws_iam_policy.tenant[each.key].arn
}
