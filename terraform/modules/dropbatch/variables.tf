# Names default to the dropbatch settings defaults (dropbatch/settings.py,
# StorageSettings), so services that only get the queue URL still find the buckets.

variable "inbox_bucket" {
  description = "Bucket clients drop <tenant>/<job>/*.jsonl and manifest.json into (DROPBATCH_INBOX_BUCKET)."
  type        = string
  default     = "dropbatch-inbox"
}

variable "outbox_bucket" {
  description = "Bucket results are written to as <tenant>/<sha256>/... (DROPBATCH_OUTBOX_BUCKET)."
  type        = string
  default     = "dropbatch-outbox"
}

variable "control_bucket" {
  description = "Service-only bucket: records, tokens, queue, leases, audit log (DROPBATCH_CONTROL_BUCKET)."
  type        = string
  default     = "dropbatch-control"
}

variable "queue_name" {
  description = "SQS queue receiving the inbox's manifest.json events (DROPBATCH_QUEUE_NAME); the DLQ is <name>-dlq."
  type        = string
  default     = "dropbatch-intake"
}

variable "name_prefix" {
  description = "Prefix for IAM role and policy names, so several deployments can share an account."
  type        = string
  default     = "dropbatch"
}

variable "inbox_expiration_days" {
  description = "Days after which inbox objects (inputs, manifests, rejections) expire; 0 keeps them."
  type        = number
  default     = 30

  validation {
    condition     = var.inbox_expiration_days >= 0
    error_message = "inbox_expiration_days must be >= 0 (0 disables expiry)."
  }
}

variable "outbox_expiration_days" {
  description = "Days after which outbox results expire; 0 keeps them. Expired results are simply recomputed on resubmission."
  type        = number
  default     = 30

  validation {
    condition     = var.outbox_expiration_days >= 0
    error_message = "outbox_expiration_days must be >= 0 (0 disables expiry)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a superseded object version is kept in any bucket (every record update makes one in control)."
  type        = number
  default     = 7
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which unfinished multipart uploads are aborted (interrupted `aws s3 cp`, crashed runners)."
  type        = number
  default     = 2
}

variable "queue_visibility_timeout_seconds" {
  description = "How long a received intake event stays hidden while the watcher admits the job."
  type        = number
  default     = 120
}

variable "queue_max_receive_count" {
  description = "Deliveries of one event before it moves to the dead-letter queue."
  type        = number
  default     = 5
}

variable "kms_key_arn" {
  description = "KMS key for default bucket encryption; null uses SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "tenants" {
  description = <<-EOT
    Drop-box tenants. Each gets an IAM policy allowing writes to inbox/<tenant>/*,
    reads of its own rejection files and reads of outbox/<tenant>/*. With
    principal_arns, a role <name_prefix>-tenant-<tenant> that those principals
    (e.g. the tenant's AWS account root or a role in it) may assume is created too.
  EOT
  type = map(object({
    principal_arns = optional(list(string), [])
  }))
  default = {}

  validation {
    condition     = alltrue([for name in keys(var.tenants) : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", name)) && !strcontains(name, "..")])
    error_message = "Tenant names must match dropbatch's rule: letters, digits, '.', '_' or '-', starting with a letter or digit (at most 64 here, for IAM names)."
  }
}

variable "service_trust_services" {
  description = "AWS services allowed to assume the gateway/watcher/runner roles (EC2 and `ray up` nodes, ECS tasks, EKS Pod Identity)."
  type        = list(string)
  default     = ["ec2.amazonaws.com", "ecs-tasks.amazonaws.com", "pods.eks.amazonaws.com"]
}

variable "service_trust_arns" {
  description = "Other principals (e.g. an EKS IRSA/Pod Identity role, a CI role) allowed to assume the service roles."
  type        = list(string)
  default     = []
}

variable "tenant_grants" {
  description = <<-EOT
    S3 locations outside dropbatch's buckets that a tenant's /start jobs may read inputs from
    (read) or write results to (write): tenant → [{bucket, prefix, read, write}]. The gateway
    role may reach exactly these bucket/prefix pairs (prefix "" is the whole bucket; "a/b"
    covers a/b and a/b/*, never a/bc). Which tenant may use which is dropbatch's own check:
    record each with `dropbatch tenant grant` (output grant_commands prints the commands).
  EOT
  type = map(list(object({
    bucket = string
    prefix = optional(string, "")
    read   = optional(bool, false)
    write  = optional(bool, false)
  })))
  default = {}

  validation {
    condition = alltrue(flatten([
      for tenant, grants in var.tenant_grants : [
        for grant in grants : (
          can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", grant.bucket)) && !strcontains(grant.bucket, "..") &&
          can(regex("^[!-~]*$", grant.prefix)) && !strcontains(grant.prefix, "\\") &&
          alltrue([for segment in split("/", trim(grant.prefix, "/")) : !contains([".", ".."], segment) && (segment != "" || trim(grant.prefix, "/") == "")]) &&
          (grant.read || grant.write)
        )
      ]
    ]))
    error_message = "Each grant needs a valid bucket name, a prefix of printable ASCII without '.', '..' or empty segments, and read and/or write."
  }
  validation {
    condition     = alltrue([for name in keys(var.tenant_grants) : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", name)) && !strcontains(name, "..")])
    error_message = "tenant_grants keys are dropbatch tenant names."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets (local stacks and throwaway deployments only)."
  type        = bool
  default     = false
}

# Feature flags: resources some local emulators cannot apply.

variable "enable_redrive_allow_policy" {
  description = "Restrict the DLQ to the intake queue (aws_sqs_queue_redrive_allow_policy). Hangs against moto: false there."
  type        = bool
  default     = true
}

variable "enable_bucket_policies" {
  description = "Bucket policies denying non-TLS access. Emulators accept them but do not enforce them."
  type        = bool
  default     = true
}

variable "enable_instance_profile" {
  description = "An EC2 instance profile for the runner role, for Ray head and worker nodes started by `ray up`."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags for every taggable resource."
  type        = map(string)
  default     = {}
}
