# Example root for real AWS. Copy it, add a backend (S3 + DynamoDB/lockfile), then:
#
#   terraform -chdir=terraform/aws init && terraform -chdir=terraform/aws apply
#   terraform -chdir=terraform/aws output -raw dropbatch_env > dropbatch.env
#
# Credentials come from the usual AWS chain (profile, SSO, instance role).

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "name" {
  description = "Resource name stem; bucket names are global, so pick something unique to you."
  type        = string
  default     = "dropbatch"
}

variable "tenants" {
  description = "Drop-box tenants → AWS principals allowed to assume their drop-box role."
  type = map(object({
    principal_arns = optional(list(string), [])
  }))
  default = {}
}

variable "tenant_grants" {
  description = "Per-tenant /start grants: tenant → [{bucket, prefix, read, write}] (see the module's variable)."
  type = map(list(object({
    bucket = string
    prefix = optional(string, "")
    read   = optional(bool, false)
    write  = optional(bool, false)
  })))
  default = {}
}

variable "kms_key_arn" {
  type    = string
  default = null
}

variable "service_trust_arns" {
  description = "Principals that run the services (e.g. EKS pod roles); EC2 and ECS tasks are trusted already."
  type        = list(string)
  default     = []
}

variable "inbox_expiration_days" {
  type    = number
  default = 30
}

variable "outbox_expiration_days" {
  type    = number
  default = 30
}

provider "aws" {
  region = var.region
  default_tags {
    tags = { "app" = "dropbatch" }
  }
}

module "dropbatch" {
  source = "../modules/dropbatch"

  inbox_bucket           = "${var.name}-inbox"
  outbox_bucket          = "${var.name}-outbox"
  control_bucket         = "${var.name}-control"
  queue_name             = "${var.name}-intake"
  name_prefix            = var.name
  tenants                = var.tenants
  tenant_grants          = var.tenant_grants
  kms_key_arn            = var.kms_key_arn
  service_trust_arns     = var.service_trust_arns
  inbox_expiration_days  = var.inbox_expiration_days
  outbox_expiration_days = var.outbox_expiration_days
}

output "role_arns" {
  value = module.dropbatch.role_arns
}

output "runner_instance_profile" {
  value = module.dropbatch.runner_instance_profile
}

output "tenant_role_arns" {
  value = module.dropbatch.tenant_role_arns
}

output "gateway_grants_policy" {
  value = module.dropbatch.gateway_grants_policy
}

output "grant_commands" {
  description = "Run these once (with the services' DROPBATCH_* settings) so the gateway knows which tenant holds which grant."
  value       = module.dropbatch.grant_commands
}

output "dropbatch_env" {
  description = "Env lines: `terraform output -raw dropbatch_env > dropbatch.env`."
  value = join("\n", concat(
    [for name, value in module.dropbatch.settings_env : "${name}=${value}"],
    ["# IAM roles for the deployment (not read by dropbatch itself)"],
    [for name, arn in module.dropbatch.role_arns : "DROPBATCH_${upper(name)}_ROLE_ARN=${arn}"],
    [""],
  ))
}
