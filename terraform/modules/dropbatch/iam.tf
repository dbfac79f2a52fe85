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

# Grants (var.tenant_grants): the bucket/prefix pairs outside dropbatch's buckets that /start may
# read inputs from or write results to. A grant on prefix "a/b" allows a/b and a/b/*, never a/bc,
# as dropbatch's own check (dropbatch/auth/grants.py) does. Built from names alone, so the
# document is known at plan time (tests/deploy reads it from a plan, offline).
locals {
  grants = flatten([
    for tenant, grants in var.tenant_grants : [
      for grant in grants : merge(grant, { tenant = tenant, prefix = trim(grant.prefix, "/") })
    ]
  ])
  grant_objects = { for mode in ["read", "write"] : mode => sort(distinct(flatten([
    for grant in local.grants : grant.prefix == "" ? ["arn:aws:s3:::${grant.bucket}/*"] : [
      "arn:aws:s3:::${grant.bucket}/${grant.prefix}",
      "arn:aws:s3:::${grant.bucket}/${grant.prefix}/*",
    ] if grant[mode]
  ]))) }
  # ListBucket (so a missing key is 404, not 403), limited to the granted prefixes of each bucket.
  grant_listings = [
    for bucket in sort(distinct([for grant in local.grants : grant.bucket])) : {
      bucket = bucket
      whole  = anytrue([for grant in local.grants : grant.bucket == bucket && grant.prefix == ""])
      prefixes = sort(distinct(flatten([
        for grant in local.grants : [grant.prefix, "${grant.prefix}/*"] if grant.bucket == bucket && grant.prefix != ""
      ])))
    }
  ]
}

data "aws_iam_policy_document" "gateway_grants" {
  lifecycle {
    precondition {
      condition     = length(setintersection([for grant in local.grants : grant.bucket], [var.inbox_bucket, var.outbox_bucket, var.control_bucket])) == 0
      error_message = "tenant_grants may not name a dropbatch bucket: tenants reach only their own prefixes there."
    }
  }

  dynamic "statement" {
    for_each = local.grant_listings
    content {
      sid       = "GrantList${statement.key}"
      actions   = ["s3:ListBucket"]
      resources = ["arn:aws:s3:::${statement.value.bucket}"]
      dynamic "condition" {
        for_each = statement.value.whole ? [] : [1]
        content {
          test     = "StringLike"
          variable = "s3:prefix"
          values   = statement.value.prefixes
        }
      }
    }
  }
  dynamic "statement" {
    for_each = length(local.grant_objects.read) > 0 ? [1] : []
    content {
      sid       = "GrantRead"
      actions   = ["s3:GetObject"]
      resources = local.grant_objects.read
    }
  }
  dynamic "statement" {
    for_each = length(local.grant_objects.write) > 0 ? [1] : []
    content {
      sid       = "GrantWrite"
      actions   = local.object_write
      resources = local.grant_objects.write
    }
  }
}

# gateway: /v1/files uploads (<tenant>/.files/) and server-signed manifests under any tenant
# prefix, reads inputs back, serves results from the outbox; /start reads and writes grants.
data "aws_iam_policy_document" "gateway" {
  source_policy_documents = [data.aws_iam_policy_document.control.json, data.aws_iam_policy_document.gateway_grants.json]

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
}

# watcher: reads manifests and inputs, writes only rejections into the inbox (a job's
# rejection.json, <name>.rejection.json beside a manifest at a key it does not admit), reads
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
    resources = ["${local.arn.inbox}/*/*rejection.json"]
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
    # "<tenant>/", never the bare name: S3 lists by key prefix, so "acme" would list acme2/… too.
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${each.key}/", "${each.key}/*"]
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
    resources = ["${local.arn.inbox}/${each.key}/*rejection.json"]
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
