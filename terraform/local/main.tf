# Example root: the dropbatch module against a local emulator (moto or LocalStack).
#
#   make tf-apply-local                        # endpoint from DROPBATCH_S3_ENDPOINT, else 127.0.0.1:4566
#   terraform -chdir=terraform/local output -raw dropbatch_env > .dropbatch/terraform.env

terraform {
  required_version = ">= 1.5"

  # State stays outside the source tree: `init -backend-config=path=...` (mk/deploy.mk
  # keeps it in .dropbatch/terraform/, the tests in a temporary folder).
  backend "local" {}

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "5.100.0"
    }
  }
}

variable "endpoint" {
  description = "The emulator's endpoint for S3, SQS, IAM and STS (DROPBATCH_S3_ENDPOINT)."
  type        = string
  default     = "http://127.0.0.1:4566"
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "name" {
  description = "Resource name stem: <name>-inbox, <name>-outbox, <name>-control, <name>-intake."
  type        = string
  default     = "dropbatch"
}

variable "tenants" {
  description = "Drop-box tenants (see the module's variable)."
  type = map(object({
    principal_arns = optional(list(string), [])
  }))
  default = {}
}

variable "tenant_grants" {
  description = "Per-tenant /start grants outside dropbatch's buckets (see the module's variable)."
  type = map(list(object({
    bucket = string
    prefix = optional(string, "")
    read   = optional(bool, false)
    write  = optional(bool, false)
  })))
  default = {}
}

variable "enable_redrive_allow_policy" {
  description = "false for moto (the provider waits forever for it); LocalStack applies it."
  type        = bool
  default     = false
}

variable "enable_bucket_policies" {
  description = "The module's TLS-only bucket policies deny plain-HTTP requests, and moto enforces them: off for http:// endpoints."
  type        = bool
  default     = false
}

provider "aws" {
  region = var.region
  # Emulators accept any credentials; these never leave the machine.
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  skip_region_validation      = true
  s3_use_path_style           = true

  endpoints {
    s3  = var.endpoint
    sqs = var.endpoint
    iam = var.endpoint
    sts = var.endpoint
  }
}

module "dropbatch" {
  source = "../modules/dropbatch"

  inbox_bucket   = "${var.name}-inbox"
  outbox_bucket  = "${var.name}-outbox"
  control_bucket = "${var.name}-control"
  queue_name     = "${var.name}-intake"
  name_prefix    = var.name
  tenants        = var.tenants
  tenant_grants  = var.tenant_grants
  force_destroy  = true

  enable_redrive_allow_policy = var.enable_redrive_allow_policy
  enable_bucket_policies      = var.enable_bucket_policies
}

output "settings_env" {
  description = "DROPBATCH_* settings for services talking to the emulator."
  value       = merge(module.dropbatch.settings_env, { DROPBATCH_S3_ENDPOINT = var.endpoint })
}

output "role_arns" {
  value = module.dropbatch.role_arns
}

output "tenant_policy_arns" {
  value = module.dropbatch.tenant_policy_arns
}

output "gateway_grants_policy" {
  description = "The gateway policy statements var.tenant_grants makes (known at plan time)."
  value       = module.dropbatch.gateway_grants_policy
}

output "grant_commands" {
  description = "Run these once so the gateway knows which tenant holds which grant."
  value       = module.dropbatch.grant_commands
}

output "dropbatch_env" {
  description = "Env lines: `terraform output -raw dropbatch_env > dropbatch.env`."
  value = join("\n", concat(
    [for name, value in merge(module.dropbatch.settings_env, { DROPBATCH_S3_ENDPOINT = var.endpoint }) : "${name}=${value}"],
    ["# IAM roles for the deployment (not read by dropbatch itself)"],
    [for name, arn in module.dropbatch.role_arns : "DROPBATCH_${upper(name)}_ROLE_ARN=${arn}"],
    [""],
  ))
}
