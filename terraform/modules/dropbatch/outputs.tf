output "inbox_bucket" {
  description = "DROPBATCH_INBOX_BUCKET"
  value       = aws_s3_bucket.this["inbox"].id
}

output "outbox_bucket" {
  description = "DROPBATCH_OUTBOX_BUCKET"
  value       = aws_s3_bucket.this["outbox"].id
}

output "control_bucket" {
  description = "DROPBATCH_CONTROL_BUCKET"
  value       = aws_s3_bucket.this["control"].id
}

output "queue_name" {
  description = "DROPBATCH_QUEUE_NAME"
  value       = aws_sqs_queue.intake.name
}

output "queue_url" {
  description = "DROPBATCH_QUEUE_URL"
  value       = aws_sqs_queue.intake.url
}

output "dead_letter_queue_url" {
  description = "Where intake events go after queue_max_receive_count failed deliveries."
  value       = aws_sqs_queue.dead_letter.url
}

output "role_arns" {
  description = "Service roles: gateway, watcher, runner."
  value       = { for name, role in aws_iam_role.service : name => role.arn }
}

output "runner_instance_profile" {
  description = "Instance profile for Ray head/worker nodes (deploy/ray/cluster.yaml), or null."
  value       = var.enable_instance_profile ? aws_iam_instance_profile.runner[0].name : null
}

output "tenant_policy_arns" {
  description = "Per-tenant drop-box policies, to attach to the tenant's users or roles."
  value       = { for name, policy in aws_iam_policy.tenant : name => policy.arn }
}

output "tenant_role_arns" {
  description = "Roles tenants assume for the drop-box (only tenants with principal_arns)."
  value       = { for name, role in aws_iam_role.tenant : name => role.arn }
}

output "gateway_grants_policy" {
  description = "The part of the gateway role's policy that var.tenant_grants makes (known at plan time)."
  value       = data.aws_iam_policy_document.gateway_grants.json
}

output "grant_commands" {
  description = "`dropbatch tenant grant` commands recording var.tenant_grants in the control bucket, where the gateway checks them per tenant."
  value = [
    for grant in local.grants : join(" ", concat(
      ["dropbatch tenant grant", grant.tenant, "s3://${grant.bucket}/${grant.prefix}"],
      grant.read ? ["--read"] : [],
      grant.write ? ["--write"] : [],
    ))
  ]
}

output "settings_env" {
  description = "The DROPBATCH_* settings the services read, as a map."
  value = {
    DROPBATCH_REGION         = data.aws_region.current.name
    DROPBATCH_INBOX_BUCKET   = aws_s3_bucket.this["inbox"].id
    DROPBATCH_OUTBOX_BUCKET  = aws_s3_bucket.this["outbox"].id
    DROPBATCH_CONTROL_BUCKET = aws_s3_bucket.this["control"].id
    DROPBATCH_QUEUE_NAME     = aws_sqs_queue.intake.name
    DROPBATCH_QUEUE_URL      = aws_sqs_queue.intake.url
  }
}
