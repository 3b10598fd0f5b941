# The six Cloud Run functions (gen2), one per folder under ../functions, each built from its own
# source archive and configured entirely through environment variables that shared/settings.py reads.

# --- sizing ----------------------------------------------------------------------------------

locals {
  # Per function: what it serves, whether anyone may call it, and its sizing. Override any sizing
  # field with var.function_settings. concurrency is both max_instance_request_concurrency and the
  # gunicorn thread count (THREADS) of each worker process: functions-framework serves one request
  # per thread, and an open chat stream holds its thread for the whole answer. workers is WORKERS,
  # gunicorn's worker processes: one per vCPU where Python's work per request is the bottleneck
  # (one process has one GIL), 1 where one core is all there is.
  function_defaults = {
    # chat_stream: 80 streams per 2-vCPU instance (README.md: chat_stream's concurrency), served by two
    # gunicorn worker processes (WORKERS = 2, one per vCPU: one GIL each, so the Python work can use
    # both cores; with one process the second vCPU only took what releases the GIL). A stream mostly
    # waits on Gemini; its CPU is the turn's own work plus ~0.2-0.4 ms per streamed chunk through the
    # instance (bench/README.md). Gemini really sends a few to ~15 chunks/s per stream: 80 x 15/s =
    # 1,200 chunks/s. Each worker runs THREADS = concurrency threads: gunicorn's workers race to
    # accept connections and nothing balances them, so either one may be handed all of the
    # instance's streams. db_pool_size is per worker process: an instance opens up to
    # workers x db_pool_size = 6 connections. 1Gi: two processes with google-genai loaded and 200
    # streams peaked at ~340 MB resident (bench/README.md, "Workers").
    chat_stream = {
      description     = "POST /chat: streams Raven's answer as server-sent events."
      public          = true
      min_instances   = 0
      max_instances   = 20
      concurrency     = 80
      cpu             = "2"
      memory          = "1Gi"
      timeout_seconds = 900 # a stream lasts as long as the answer: far above MODEL_TIMEOUT_SECONDS
      workers         = 2
      db_pool_size    = 3
    }
    chats_crud = {
      description     = "/api/chats and /api/chats/*: list, read, rename and delete chats."
      public          = true
      min_instances   = 0
      max_instances   = 10
      concurrency     = 40
      cpu             = "1"
      memory          = "512Mi"
      timeout_seconds = 60
      workers         = 1
      db_pool_size    = 4
    }
    upload_url = {
      description     = "POST /api/upload-url: signed URLs for direct browser uploads."
      public          = true
      min_instances   = 0
      max_instances   = 5
      concurrency     = 40
      cpu             = "1"
      memory          = "512Mi"
      timeout_seconds = 30
      workers         = 1
      db_pool_size    = 2
    }
    clerk_webhook = {
      description     = "POST /clerk-webhook: Clerk user events (create, update, delete)."
      public          = true
      min_instances   = 0
      max_instances   = 3
      concurrency     = 10
      cpu             = "1"
      memory          = "512Mi"
      timeout_seconds = 300 # deleting a user removes all their media
      workers         = 1
      db_pool_size    = 2
    }
    summarize = {
      description     = "Cloud Tasks worker: writes rolling chat summaries. Private."
      public          = false
      min_instances   = 0
      max_instances   = 5
      concurrency     = 4
      cpu             = "1"
      memory          = "512Mi"
      timeout_seconds = 300
      workers         = 1
      db_pool_size    = 2
    }
    # Called by Cloud Scheduler every 10 minutes (scheduler.tf). One sweep at a time per instance:
    # it works through the queue row by row with one database connection, within a 240 s budget
    # (SWEEP_BUDGET_SECONDS in its main.py) that the 300 s timeout covers with the last row's work.
    # A second instance only serves a call that overlaps a running sweep (a manual run); both may
    # work the queue at once, since rows are claimed with FOR UPDATE SKIP LOCKED and a lease.
    storage_sweep = {
      description     = "Cloud Scheduler worker: deletes the bucket objects of deleted chats and users. Private."
      public          = false
      min_instances   = 0
      max_instances   = 2
      concurrency     = 1
      cpu             = "1"
      memory          = "512Mi"
      timeout_seconds = 300
      workers         = 1
      db_pool_size    = 1
    }
  }

  functions = {
    for function, defaults in local.function_defaults : function => merge(defaults, {
      for field, value in try(var.function_settings[function], {}) : field => value if value != null
    })
  }

  public_functions = toset([for function, config in local.functions : function if config.public])
}

# --- environment -----------------------------------------------------------------------------
#
# Every name below is an environment variable shared/settings.py reads (a field alias there), except
# THREADS and WORKERS, which functions-framework reads. Each function gets only what its own code reads:
# tests/test_terraform.py checks both ways, that every variable a function's main.py require()s is
# given to it here or as a secret (secrets.tf), and that every variable given to a function is read
# by the code in its archive (main.py and the shared/ modules it imports).

locals {
  # Given to every function: settings.py and the database connection read them at start.
  common_env = {
    ENVIRONMENT              = "production"
    PROJECT_ID               = var.project_id
    INSTANCE_CONNECTION_NAME = google_sql_database_instance.main.connection_name
    DB_NAME                  = google_sql_database.raven.name
    DB_IP_TYPE               = "PRIVATE" # the connector must use the private IP: there is no public one
  }

  # Given to the functions that list them in function_env_keys. A null value is left out.
  shared_env = merge(local.tuning_env, {
    ALLOWED_ORIGINS               = join(",", var.allowed_origins)
    CLERK_ISSUER                  = var.clerk_issuer
    CLERK_JWKS_URL                = local.clerk_jwks_url
    GCS_BUCKET_NAME               = google_storage_bucket.uploads.name
    LOCATION                      = local.vertex_location
    RAVEN_MODEL                   = var.raven_model
    SUMMARY_MODEL                 = var.summary_model
    GEMINI_FALLBACK_MODEL         = var.gemini_fallback_model
    PLAN_CLAIM                    = var.plans.claim
    DEFAULT_PLAN                  = var.plans.default
    PLAN_LIMITS                   = var.plans.limits == null ? null : jsonencode(var.plans.limits)
    THINKING_BUDGET               = var.thinking_budget == null ? null : tostring(var.thinking_budget)
    CHAT_STREAM_FORMAT            = var.chat_stream_format
    SYSTEM_INSTRUCTION_URL        = "gs://${google_storage_bucket.config.name}/${google_storage_bucket_object.system_instruction.name}"
    TASKS_QUEUE                   = google_cloud_tasks_queue.summaries.id
    SUMMARIZE_URL                 = local.summarize_url
    TASKS_INVOKER_SERVICE_ACCOUNT = google_service_account.tasks_invoker.email
  })

  # Values that are the function's own identity. SIGNER_SERVICE_ACCOUNT: URLs are signed with IAM
  # signBlob as the function's own account (iam.tf lets each sign only as itself).
  own_env = {
    for function in keys(local.function_defaults) : function => {
      SIGNER_SERVICE_ACCOUNT = google_service_account.function[function].email
    }
  }

  # var.tuning's settings that shared/settings.py itself checks against each other at start (context
  # and summary budgets, request limits): every function reads them.
  tuning_read_by_all = [
    "DB_ACQUIRE_TIMEOUT_SECONDS", "JWT_LEEWAY_SECONDS", "MAX_CONTEXT_TOKENS", "MAX_REQUEST_BYTES",
    "SUMMARY_MAX_TOKENS", "SUMMARY_TARGET_TOKENS", "TARGET_WINDOW_TOKENS",
    # shared/serving.py, which every function's HTTP pipeline installs, bounds request bodies.
    "REQUEST_BODY_TIMEOUT_SECONDS",
  ]

  # MEDIA_URL_TTL_SECONDS, UPLOAD_MAX_BYTES, UPLOAD_URL_TTL_SECONDS: the uploads bucket's limits and
  # URL lifetimes, read by every function that imports shared/storage.py (all but summarize).
  function_env_keys = {
    chat_stream = [
      "ALLOWED_ORIGINS", "CLERK_ISSUER", "CLERK_JWKS_URL", "GCS_BUCKET_NAME", "LOCATION",
      "RAVEN_MODEL", "THINKING_BUDGET", "SYSTEM_INSTRUCTION_URL", "CHAT_STREAM_FORMAT",
      "TASKS_QUEUE", "SUMMARIZE_URL", "TASKS_INVOKER_SERVICE_ACCOUNT",
      "CHAT_MAX_REQUEST_BYTES", "CHAT_WINDOW_SIZE", "MAX_MESSAGE_CHARS", "MODEL_TIMEOUT_SECONDS",
      "MEDIA_ALLOW_HISTORY_IF_REFERENCED", "MEDIA_INCLUDE_ONLY_CURRENT", "MEDIA_MAX_IMAGES",
      "MEDIA_MAX_PARTS", "MEDIA_MAX_VIDEOS", "RATE_LIMIT_MESSAGES_PER_MINUTE",
      "RATE_LIMIT_TOKENS_PER_DAY", "SSE_HEARTBEAT_SECONDS", "SUMMARY_KEEP_RECENT",
      "SUMMARY_MIN_MESSAGES", "SUMMARY_TRIGGER_TOKENS", "SYSTEM_INSTRUCTION_TTL_SECONDS",
      "GEMINI_FALLBACK_MODEL", "GEMINI_RETRY_BUDGET_SECONDS", "PLAN_CLAIM", "DEFAULT_PLAN", "PLAN_LIMITS",
      "MEDIA_URL_TTL_SECONDS", "UPLOAD_MAX_BYTES", "UPLOAD_URL_TTL_SECONDS",
    ]
    chats_crud = [
      "ALLOWED_ORIGINS", "CLERK_ISSUER", "CLERK_JWKS_URL", "GCS_BUCKET_NAME", "SIGNER_SERVICE_ACCOUNT",
      "PLAN_CLAIM", "DEFAULT_PLAN", "PLAN_LIMITS", "RATE_LIMIT_MESSAGES_PER_MINUTE", "RATE_LIMIT_TOKENS_PER_DAY",
      "MEDIA_URL_TTL_SECONDS", "UPLOAD_MAX_BYTES", "UPLOAD_URL_TTL_SECONDS",
    ]
    upload_url = [
      "ALLOWED_ORIGINS", "CLERK_ISSUER", "CLERK_JWKS_URL", "GCS_BUCKET_NAME", "SIGNER_SERVICE_ACCOUNT", "UPLOAD_ALLOWED_TYPES",
      "MEDIA_URL_TTL_SECONDS", "UPLOAD_MAX_BYTES", "UPLOAD_URL_TTL_SECONDS",
    ]
    clerk_webhook = ["GCS_BUCKET_NAME", "MEDIA_URL_TTL_SECONDS", "UPLOAD_MAX_BYTES", "UPLOAD_URL_TTL_SECONDS"]
    summarize     = ["LOCATION", "SUMMARY_MODEL", "THINKING_BUDGET", "MODEL_TIMEOUT_SECONDS", "GEMINI_RETRY_BUDGET_SECONDS"]
    # The queue rows name their buckets: besides the database and PROJECT_ID (common_env), only what
    # shared/storage.py reads.
    storage_sweep = ["MEDIA_URL_TTL_SECONDS", "UPLOAD_MAX_BYTES", "UPLOAD_URL_TTL_SECONDS"]
  }

  # var.tuning: chat_window_size = 30 -> CHAT_WINDOW_SIZE=30; lists are joined with commas.
  tuning_env = {
    for name, value in var.tuning : upper(name) => try(join(",", value), tostring(value))
    if value != null
  }

  function_env = {
    for function, config in local.functions : function => merge(
      local.common_env,
      {
        for key in concat(local.tuning_read_by_all, local.function_env_keys[function]) :
        key => merge(local.shared_env, local.own_env[function])[key]
        if lookup(merge(local.shared_env, local.own_env[function]), key, null) != null
      },
      {
        # Cloud SQL IAM users for service accounts are named by the email without this suffix.
        DB_IAM_USER  = trimsuffix(google_service_account.function[function].email, ".gserviceaccount.com")
        DB_POOL_SIZE = tostring(config.db_pool_size)
      },
    )
  }

  # summarize's URL, known before it exists (Cloud Run's deterministic URL) so that chat_stream, in the
  # same for_each, can be given it without a dependency cycle. Cloud Tasks sends it as the OIDC
  # audience, which Cloud Run accepts for any of the service's run.app URLs.
  summarize_url = "https://${local.resource_names["summarize"]}-${data.google_project.this.number}.${var.region}.run.app"
}

# --- source archives -------------------------------------------------------------------------
#
# Built by `make archives`, hashed by Terraform (archives.tf). The object is named by the content
# hash Terraform computed from the sources; the precondition refuses an archive built from others.

resource "google_storage_bucket_object" "source" {
  for_each = local.functions

  bucket       = google_storage_bucket.sources.name
  name         = "functions/${each.key}/${local.source_hash[each.key]}.zip"
  source       = "${path.module}/.build/${each.key}.zip"
  content_type = "application/zip"

  lifecycle {
    precondition {
      condition = (
        fileexists("${path.module}/.build/${each.key}.zip.sha256")
        && try(trimspace(file("${path.module}/.build/${each.key}.zip.sha256")), "") == local.source_hash[each.key]
      )
      error_message = "terraform/.build/${each.key}.zip is missing or was built from other sources: run `make archives` in the repository root, then plan or apply again."
    }
  }
}

# --- functions -------------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "function" {
  for_each = local.functions

  name        = local.resource_names[each.key]
  location    = var.region
  description = each.value.description

  #checkov:skip=CKV_GCP_124:Ingress stays ALLOW_ALL: the browser calls chat_stream, chats_crud and upload_url, Clerk calls clerk_webhook, Cloud Tasks calls summarize and Cloud Scheduler calls storage_sweep, all at their public URLs. summarize and storage_sweep are still private: only the tasks invoker, respectively the sweep scheduler account, holds run.invoker on them.

  build_config {
    runtime         = "python311"
    entry_point     = each.key
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.source[each.key].name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.function[each.key].email
    available_cpu                    = each.value.cpu
    available_memory                 = each.value.memory
    timeout_seconds                  = each.value.timeout_seconds
    min_instance_count               = each.value.min_instances
    max_instance_count               = each.value.max_instances
    max_instance_request_concurrency = each.value.concurrency
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true

    # THREADS: one gunicorn thread per request the instance may be sent at once, in each of the
    # WORKERS processes (nothing balances connections between them).
    environment_variables = merge(local.function_env[each.key], {
      THREADS = tostring(each.value.concurrency)
      WORKERS = tostring(each.value.workers)
    })

    dynamic "secret_environment_variables" {
      for_each = local.function_secrets[each.key]
      content {
        key        = secret_environment_variables.value
        project_id = var.project_id
        secret     = google_secret_manager_secret.secret[secret_environment_variables.value].secret_id
        version    = google_secret_manager_secret_version.secret[secret_environment_variables.value].version
      }
    }

    # Private-range traffic (Cloud SQL's private IP) goes into the VPC; the rest goes out directly.
    direct_vpc_network_interface {
      # Names, as the provider documents these fields (an id would be rewritten to a name by the API
      # and show as a change on every plan).
      network    = google_compute_network.main.name
      subnetwork = google_compute_subnetwork.serverless.name
    }
    direct_vpc_egress = "VPC_EGRESS_PRIVATE_RANGES_ONLY"
  }

  lifecycle {
    precondition {
      condition     = each.value.min_instances <= each.value.max_instances
      error_message = "function_settings.${each.key}: min_instances (${each.value.min_instances}) must not exceed max_instances (${each.value.max_instances})."
    }
    precondition {
      condition     = each.value.concurrency == 1 || tonumber(each.value.cpu) >= 1
      error_message = "A function serving more than one request at a time (concurrency > 1) needs at least 1 CPU."
    }
    precondition {
      condition     = each.value.workers <= max(1, ceil(tonumber(each.value.cpu)))
      error_message = "function_settings.${each.key}: workers (${each.value.workers}) beyond the instance's vCPUs (${each.value.cpu}) only add memory: one worker process per vCPU at most."
    }
  }

  depends_on = [
    google_project_iam_member.grant,
    google_project_iam_member.build_gcf_buckets,
    google_secret_manager_secret_iam_member.function,
    google_storage_bucket_iam_member.build_reads_sources,
    google_sql_user.function,
  ]
}

# The four browser- and Clerk-facing functions are public: they authenticate callers themselves (Clerk
# session tokens, Clerk webhook signatures). summarize and storage_sweep are not in this list: Cloud Run
# admits only their one invoker account each (iam.tf, scheduler.tf).
resource "google_cloud_run_v2_service_iam_member" "public" {
  for_each = local.public_functions

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker" # anyone may send a request; the function decides who is authenticated
  member   = "allUsers"
}
