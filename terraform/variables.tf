# Inputs. terraform.tfvars.example shows a working set; README.md explains each group.

# --- project -------------------------------------------------------------------------------

variable "project_id" {
  type        = string
  description = "The Google Cloud project to deploy into (it must have billing enabled)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits or hyphens), not its name or number."
  }
}

variable "region" {
  type        = string
  description = "The region of every regional resource: functions, Cloud SQL, buckets, queue, network."
  default     = "us-central1"
}

variable "name_prefix" {
  type        = string
  description = "Prefix of every resource name (functions, service accounts, buckets, queue)."
  default     = "raven"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,8}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 2-10 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen (it is the Artifact Registry repository's id; service account IDs are at most 30 characters)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels added to every resource that takes labels (app and managed-by are always added)."
  default     = {}
}

# --- the frontend and Clerk ------------------------------------------------------------------

variable "allowed_origins" {
  type        = list(string)
  description = "Browser origins of the frontend (e.g. https://raven.example.com): CORS for the API (ALLOWED_ORIGINS) and for direct uploads to the uploads bucket."

  validation {
    condition     = length(var.allowed_origins) > 0
    error_message = "Give at least one frontend origin, e.g. [\"https://raven.example.com\"]."
  }

  validation {
    condition = alltrue([
      for origin in var.allowed_origins : can(regex("^https?://[^/]+$", origin))
    ])
    error_message = "Each origin must be a scheme and host (and optional port) with no path or trailing slash, e.g. https://raven.example.com."
  }
}

variable "clerk_issuer" {
  type        = string
  description = "Clerk's issuer (your Clerk Frontend API URL, e.g. https://clerk.raven.example.com): session tokens must carry it as iss (CLERK_ISSUER)."

  validation {
    condition     = can(regex("^https://[^/]+$", var.clerk_issuer))
    error_message = "clerk_issuer must be an https:// URL with no path or trailing slash."
  }
}

variable "clerk_jwks_url" {
  type        = string
  description = "Where the functions fetch Clerk's signing keys (CLERK_JWKS_URL). Null: <clerk_issuer>/.well-known/jwks.json, unless clerk_jwt_key is set."
  default     = null

  validation {
    condition     = var.clerk_jwks_url == null || can(regex("^https://", var.clerk_jwks_url))
    error_message = "clerk_jwks_url must be an https:// URL."
  }
}

variable "clerk_jwt_key" {
  type        = string
  ephemeral   = true
  description = "Optional: Clerk's JWT verification key (PEM, from the Clerk dashboard's API keys page), to verify session tokens without fetching JWKS. Written to Secret Manager as CLERK_JWT_KEY when secret_versions has CLERK_JWT_KEY; ephemeral, never in the state."
  default     = null
  sensitive   = true

  validation {
    condition     = var.clerk_jwt_key == null || can(regex("BEGIN PUBLIC KEY", var.clerk_jwt_key))
    error_message = "clerk_jwt_key must be the PEM public key (-----BEGIN PUBLIC KEY----- ...)."
  }
}

variable "clerk_secret_key" {
  type        = string
  ephemeral   = true
  description = "Optional: Clerk's secret key (sk_live_...), for calls to Clerk's Backend API. Written to Secret Manager as CLERK_SECRET_KEY when secret_versions has CLERK_SECRET_KEY; ephemeral, never in the state."
  default     = null
  sensitive   = true

  validation {
    condition     = var.clerk_secret_key == null || can(regex("^sk_(live|test)_", var.clerk_secret_key))
    error_message = "clerk_secret_key must start with sk_live_ or sk_test_."
  }
}

variable "clerk_webhook_secret" {
  type        = string
  ephemeral   = true
  description = "The signing secret of the Clerk webhook endpoint that points at the clerk_webhook function (whsec_...), written to Secret Manager as CLERK_WEBHOOK_SECRET. Ephemeral, never in the state: give it (TF_VAR_clerk_webhook_secret) on every plan and apply. README.md says how to get it before the first apply."
  default     = null
  sensitive   = true

  validation {
    condition     = var.clerk_webhook_secret == null || can(regex("^whsec_", var.clerk_webhook_secret))
    error_message = "clerk_webhook_secret must be the signing secret Clerk shows, starting with whsec_."
  }
}

variable "secret_versions" {
  type        = map(number)
  description = <<-EOT
    Which secrets this deployment has, and the version number of each one's value: CLERK_WEBHOOK_SECRET
    (required), CLERK_SECRET_KEY, CLERK_JWT_KEY, GEMINI_API_KEY. The values themselves come from the
    ephemeral variables (clerk_webhook_secret, clerk_secret_key, clerk_jwt_key, gemini_api_key) and are
    never stored, so Terraform cannot see them change: to rotate a secret, give the new value and bump
    its number (README.md: Operations). A secret left out here is not created, and its variable is
    ignored.
  EOT
  default     = { CLERK_WEBHOOK_SECRET = 1 }

  validation {
    condition = alltrue([
      for name in keys(var.secret_versions) :
      contains(["CLERK_WEBHOOK_SECRET", "CLERK_SECRET_KEY", "CLERK_JWT_KEY", "GEMINI_API_KEY"], name)
    ])
    error_message = "secret_versions keys must be CLERK_WEBHOOK_SECRET, CLERK_SECRET_KEY, CLERK_JWT_KEY or GEMINI_API_KEY."
  }

  validation {
    condition     = contains(keys(var.secret_versions), "CLERK_WEBHOOK_SECRET")
    error_message = "secret_versions must have CLERK_WEBHOOK_SECRET: clerk_webhook cannot start without it."
  }

  validation {
    condition     = alltrue([for version in values(var.secret_versions) : version >= 1 && floor(version) == version])
    error_message = "Each secret's version number must be a whole number, 1 or more."
  }
}

variable "migrator_password_version" {
  type        = number
  description = "Bump to give the migrations job's database user a new random password (written to the user and its secret in the same apply; never stored in the state)."
  default     = 1

  validation {
    condition     = var.migrator_password_version >= 1 && floor(var.migrator_password_version) == var.migrator_password_version
    error_message = "migrator_password_version must be a whole number, 1 or more."
  }
}

# --- Gemini ----------------------------------------------------------------------------------

variable "gemini_api_key" {
  type        = string
  ephemeral   = true
  description = "Optional: a Gemini API key (GEMINI_API_KEY), written to Secret Manager when secret_versions has GEMINI_API_KEY; ephemeral, never in the state. Without it (recommended): Gemini through Vertex AI with the functions' own service accounts, no key at all."
  default     = null
  sensitive   = true
}

variable "vertex_location" {
  type        = string
  description = "Vertex AI location for Gemini calls (LOCATION), e.g. us-central1 or global. Null: the region."
  default     = null
}

variable "raven_model" {
  type        = string
  description = "Gemini model for chat answers (RAVEN_MODEL). Null: the default in shared/settings.py."
  default     = null
}

variable "summary_model" {
  type        = string
  description = "Gemini model for rolling chat summaries (SUMMARY_MODEL). Null: the default in shared/settings.py."
  default     = null
}

variable "gemini_fallback_model" {
  type        = string
  description = "Gemini model tried once when RAVEN_MODEL stays busy or unavailable before the first chunk (GEMINI_FALLBACK_MODEL). Null: none."
  default     = null
}

variable "plans" {
  type = object({
    claim   = optional(string)
    default = optional(string)
    limits = optional(map(object({
      messages_per_minute = optional(number)
      tokens_per_day      = optional(number)
    })))
  })
  description = <<-EOT
    Per-plan limits: the session-token claim naming the plan (PLAN_CLAIM), the plan of users without one
    (DEFAULT_PLAN) and each plan's limits (PLAN_LIMITS; a limit left out is tuning's rate_limit_* value).
    Null fields keep the defaults in shared/settings.py.
  EOT
  default     = {}
}

variable "thinking_budget" {
  type        = number
  description = "Gemini thinking budget in tokens, 0 for none (THINKING_BUDGET). Null: the default in shared/settings.py."
  default     = null

  validation {
    condition     = var.thinking_budget == null || try(var.thinking_budget >= 0 && floor(var.thinking_budget) == var.thinking_budget, false)
    error_message = "thinking_budget must be a whole number of tokens, 0 or more."
  }
}

# --- functions -------------------------------------------------------------------------------

variable "chat_stream_format" {
  type        = string
  description = <<-EOT
    How POST /chat frames its events for a request whose Accept names neither text/event-stream nor
    application/x-ndjson (CHAT_STREAM_FORMAT): "ndjson" or "sse". The existing Raven web frontend sends no
    Accept and reads NDJSON, so the default is "ndjson"; a client that wants SSE asks for it with Accept.
  EOT
  default     = "ndjson"

  validation {
    condition     = contains(["ndjson", "sse"], var.chat_stream_format)
    error_message = "chat_stream_format must be \"ndjson\" or \"sse\"."
  }
}

variable "function_settings" {
  type = map(object({
    min_instances   = optional(number)
    max_instances   = optional(number)
    concurrency     = optional(number)
    cpu             = optional(string)
    memory          = optional(string)
    timeout_seconds = optional(number)
    workers         = optional(number)
    db_pool_size    = optional(number)
  }))
  description = <<-EOT
    Per-function overrides of the sizing defaults in functions.tf (local.function_defaults), keyed by
    function folder name (chat_stream, chats_crud, upload_url, clerk_webhook, summarize, storage_sweep);
    any field left out keeps its default. concurrency is the requests one instance serves at once
    (max_instance_request_concurrency) and also its thread count (THREADS): one open chat stream holds one
    thread; each of the instance's worker processes has that many threads. workers is WORKERS, gunicorn's
    worker processes per instance (one per vCPU where Python's CPU is the bottleneck). db_pool_size is
    DB_POOL_SIZE, the database connections one worker process may open; Cloud SQL's max_connections
    must fit max_instances x workers x db_pool_size of every function.
  EOT
  default     = {}

  validation {
    condition = alltrue([
      for name in keys(var.function_settings) :
      contains(["chat_stream", "chats_crud", "upload_url", "clerk_webhook", "summarize", "storage_sweep"], name)
    ])
    error_message = "function_settings keys must be function folder names: chat_stream, chats_crud, upload_url, clerk_webhook, summarize, storage_sweep."
  }

  validation {
    condition = alltrue(flatten([
      for settings in values(var.function_settings) : [
        settings.min_instances == null || try(settings.min_instances >= 0, false),
        settings.max_instances == null || try(settings.max_instances >= 1, false),
        settings.concurrency == null || try(settings.concurrency >= 1 && settings.concurrency <= 1000, false),
        settings.timeout_seconds == null || try(settings.timeout_seconds >= 1 && settings.timeout_seconds <= 3600, false),
        settings.db_pool_size == null || try(settings.db_pool_size >= 1, false),
        settings.workers == null || try(settings.workers >= 1 && settings.workers <= 8 && floor(settings.workers) == settings.workers, false),
        settings.cpu == null || can(tonumber(settings.cpu)),
      ]
    ]))
    error_message = "min_instances >= 0, max_instances >= 1, concurrency 1-1000, timeout_seconds 1-3600 (the HTTP maximum), db_pool_size >= 1, workers a whole number 1-8, cpu a number of vCPUs such as \"1\" or \"2\"."
  }
}

variable "tuning" {
  type = object({
    max_request_bytes                 = optional(number)
    request_body_timeout_seconds      = optional(number)
    db_acquire_timeout_seconds        = optional(number)
    jwt_leeway_seconds                = optional(number)
    model_timeout_seconds             = optional(number)
    sse_heartbeat_seconds             = optional(number)
    chat_max_request_bytes            = optional(number)
    max_message_chars                 = optional(number)
    system_instruction_ttl_seconds    = optional(number)
    chat_window_size                  = optional(number)
    max_context_tokens                = optional(number)
    target_window_tokens              = optional(number)
    summary_trigger_tokens            = optional(number)
    summary_target_tokens             = optional(number)
    summary_max_tokens                = optional(number)
    summary_min_messages              = optional(number)
    summary_keep_recent               = optional(number)
    media_include_only_current        = optional(bool)
    media_allow_history_if_referenced = optional(bool)
    media_max_parts                   = optional(number)
    media_max_images                  = optional(number)
    media_max_videos                  = optional(number)
    upload_max_bytes                  = optional(number)
    upload_allowed_types              = optional(list(string))
    upload_url_ttl_seconds            = optional(number)
    media_url_ttl_seconds             = optional(number)
    rate_limit_messages_per_minute    = optional(number)
    rate_limit_tokens_per_day         = optional(number)
    gemini_retry_budget_seconds       = optional(number)
  })
  description = <<-EOT
    Application tunables, given to every function as environment variables named in upper case
    (chat_window_size -> CHAT_WINDOW_SIZE). Each is a field of shared/settings.py, which documents it and
    holds its default; leave one out (null) to keep that default. Lists are joined with commas.
  EOT
  default     = {}

  validation {
    condition = (
      var.tuning.target_window_tokens == null || var.tuning.max_context_tokens == null
      ? true
      : var.tuning.target_window_tokens <= var.tuning.max_context_tokens
    )
    error_message = "tuning.target_window_tokens must not exceed tuning.max_context_tokens."
  }

  validation {
    condition = (
      var.tuning.summary_target_tokens == null || var.tuning.summary_max_tokens == null
      ? true
      : var.tuning.summary_target_tokens <= var.tuning.summary_max_tokens
    )
    error_message = "tuning.summary_target_tokens must not exceed tuning.summary_max_tokens."
  }

  validation {
    condition = alltrue([
      for ttl in [var.tuning.upload_url_ttl_seconds, var.tuning.media_url_ttl_seconds] :
      ttl == null || try(ttl >= 60 && ttl <= 604800, false)
    ])
    error_message = "Signed URL lifetimes (upload_url_ttl_seconds, media_url_ttl_seconds) must be 60-604800 seconds."
  }
}

# --- database --------------------------------------------------------------------------------

variable "database_tier" {
  type        = string
  description = "Cloud SQL machine type, e.g. db-custom-1-3840 (1 vCPU, 3.75 GB) or db-custom-2-7680. Shared-core tiers (db-f1-micro, db-g1-small) are cheaper but have no SLA."
  default     = "db-custom-1-3840"
}

variable "database_edition" {
  type        = string
  description = "Cloud SQL edition. ENTERPRISE takes the db-custom-* tiers; ENTERPRISE_PLUS needs db-perf-optimized-N-* tiers."
  default     = "ENTERPRISE"

  validation {
    condition     = contains(["ENTERPRISE", "ENTERPRISE_PLUS"], var.database_edition)
    error_message = "database_edition must be ENTERPRISE or ENTERPRISE_PLUS."
  }
}

variable "database_availability_type" {
  type        = string
  description = "ZONAL (one zone) or REGIONAL (high availability with a standby in a second zone, twice the cost)."
  default     = "ZONAL"

  validation {
    condition     = contains(["ZONAL", "REGIONAL"], var.database_availability_type)
    error_message = "database_availability_type must be ZONAL or REGIONAL."
  }
}

variable "database_disk_size_gb" {
  type        = number
  description = "Initial SSD size in GB; it grows automatically."
  default     = 10

  validation {
    condition     = var.database_disk_size_gb >= 10
    error_message = "database_disk_size_gb must be at least 10."
  }
}

variable "database_backup_retention_count" {
  type        = number
  description = "How many daily automated backups to keep."
  default     = 14

  validation {
    condition     = var.database_backup_retention_count >= 1 && var.database_backup_retention_count <= 365
    error_message = "database_backup_retention_count must be 1-365."
  }
}

variable "database_log_retention_days" {
  type        = number
  description = "Days of write-ahead log kept for point-in-time recovery (1-7 on ENTERPRISE, up to 35 on ENTERPRISE_PLUS)."
  default     = 7

  validation {
    condition     = var.database_log_retention_days >= 1 && var.database_log_retention_days <= (var.database_edition == "ENTERPRISE_PLUS" ? 35 : 7)
    error_message = "database_log_retention_days must be 1-7 on the ENTERPRISE edition, 1-35 on ENTERPRISE_PLUS."
  }
}

variable "database_max_connections" {
  type        = number
  description = "Cloud SQL's max_connections: a ceiling the functions' pools must fit under (sum of max_instances x workers x db_pool_size over the functions, plus database_connection_headroom; a plan fails when they do not). PostgreSQL applies it only at a restart, so changing it restarts the instance once; resizing the functions within it never does. The default leaves room to grow from the default sizing (208) without a restart."
  default     = 250

  validation {
    condition     = var.database_max_connections >= 50 && var.database_max_connections <= 10000 && floor(var.database_max_connections) == var.database_max_connections
    error_message = "database_max_connections must be a whole number, 50-10000."
  }
}

variable "database_connection_headroom" {
  type        = number
  description = "Connections kept free under database_max_connections on top of what the functions' pools can open: the migrations job, operators, Cloud SQL's own reserved connections."
  default     = 20

  validation {
    condition     = var.database_connection_headroom >= 10
    error_message = "database_connection_headroom must be at least 10 (Cloud SQL reserves some connections for itself)."
  }
}

variable "database_public_ip" {
  type        = bool
  description = "Also give Cloud SQL a public IP, with no authorized networks (only the Cloud SQL connector and Auth Proxy, which authenticate with IAM, can use it): only to reach the database from outside the VPC, e.g. psql through the Auth Proxy from an operator's machine. The functions and the migrations job always use the private IP."
  default     = false
}

variable "deletion_protection" {
  type        = bool
  description = "Refuse to delete the Cloud SQL instance, from Terraform and from the API. Set false, apply, then destroy, to tear everything down."
  default     = true
}

# --- network ---------------------------------------------------------------------------------

variable "subnet_cidr" {
  type        = string
  description = "The subnet the functions and the migrations job send private traffic from (Direct VPC egress takes two addresses per instance: /24 serves about 120 instances)."
  default     = "10.8.0.0/24"

  validation {
    condition     = can(regex("^\\d+\\.\\d+\\.\\d+\\.\\d+/\\d+$", var.subnet_cidr)) && can(cidrhost(var.subnet_cidr, 0)) && try(tonumber(split("/", var.subnet_cidr)[1]) <= 26, false)
    error_message = "subnet_cidr must be an IPv4 range of /26 or larger (Direct VPC egress needs at least /26)."
  }
}

variable "private_service_access_prefix_length" {
  type        = number
  description = "Size of the range reserved for Google-managed services (Cloud SQL's private IP) peered into the VPC."
  default     = 20

  validation {
    condition     = var.private_service_access_prefix_length >= 16 && var.private_service_access_prefix_length <= 24
    error_message = "private_service_access_prefix_length must be 16-24."
  }
}

# --- storage and summaries -------------------------------------------------------------------

variable "unreferenced_upload_days" {
  type        = number
  description = "Delete an upload still under incoming/ (never used in a message, so never checked and promoted to uploads/) this many days after it was uploaded (README.md: Uploads)."
  default     = 1

  validation {
    condition     = var.unreferenced_upload_days >= 1
    error_message = "unreferenced_upload_days must be at least 1."
  }
}

variable "storage_sweep_schedule" {
  type        = string
  description = "When Cloud Scheduler calls storage_sweep, which finishes the bucket deletions of deleted chats and users (unix-cron, UTC). Every 10 minutes by default; each sweep runs at most 240 s."
  default     = "*/10 * * * *"

  validation {
    condition     = can(regex("^\\S+(\\s+\\S+){4}$", trimspace(var.storage_sweep_schedule)))
    error_message = "storage_sweep_schedule must be a unix-cron expression of five fields, e.g. \"*/10 * * * *\"."
  }
}

variable "summaries_queue" {
  type = object({
    max_dispatches_per_second = optional(number, 5)
    max_concurrent_dispatches = optional(number, 10)
    max_attempts              = optional(number, 5)
    min_backoff_seconds       = optional(number, 10)
    max_backoff_seconds       = optional(number, 600)
    max_doublings             = optional(number, 4)
    max_retry_duration_hours  = optional(number, 6)
  })
  description = "Rate limits and retries of the Cloud Tasks queue that calls the summarize function: failed tasks are retried with exponential backoff from min to max backoff, at most max_attempts times within max_retry_duration_hours."
  default     = {}

  validation {
    condition = (
      var.summaries_queue.max_dispatches_per_second > 0
      && var.summaries_queue.max_concurrent_dispatches >= 1
      && var.summaries_queue.max_attempts >= 1
      && var.summaries_queue.min_backoff_seconds >= 1
      && var.summaries_queue.max_backoff_seconds >= var.summaries_queue.min_backoff_seconds
    )
    error_message = "Queue rates must be positive, max_attempts >= 1 and max_backoff_seconds >= min_backoff_seconds >= 1."
  }
}

# --- optional single-domain load balancer ----------------------------------------------------

variable "enable_load_balancer" {
  type        = bool
  description = "Serve every API path under one domain through a global HTTPS load balancer with a Google-managed certificate (about $18/month plus traffic)."
  default     = false
}

variable "domain" {
  type        = string
  description = "The API's domain when enable_load_balancer is true, e.g. api.raven.example.com: point its DNS A record at the load_balancer_ip output."
  default     = null

  validation {
    condition     = var.domain == null || can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.domain))
    error_message = "domain must be a lowercase host name such as api.raven.example.com (no scheme, no path)."
  }
}
