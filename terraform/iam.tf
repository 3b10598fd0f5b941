# Service accounts and their roles: one account per workload, each with only what it needs, and
# every grant on the narrowest resource that allows it. Secret access is granted per secret in
# secrets.tf, next to the list of which function reads which secret.

# --- service accounts ------------------------------------------------------------------------

# One per function: its identity for Cloud SQL (as an IAM database user), Vertex AI, Cloud Storage
# and Cloud Tasks.
resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = local.resource_names[each.key]
  display_name = "Raven ${each.key} function"
  description  = "Runs the ${each.key} Cloud Run function."

  depends_on = [time_sleep.apis_ready]
}

# The identity whose OIDC token Cloud Tasks attaches when it calls summarize.
resource "google_service_account" "tasks_invoker" {
  account_id   = "${var.name_prefix}-tasks-invoker"
  display_name = "Raven Cloud Tasks invoker"
  description  = "Cloud Tasks signs summary requests to the summarize function as this account."

  depends_on = [time_sleep.apis_ready]
}

# The identity whose OIDC token Cloud Scheduler attaches when it calls storage_sweep (scheduler.tf).
resource "google_service_account" "sweep_scheduler" {
  account_id   = "${var.name_prefix}-sweep-scheduler"
  display_name = "Raven storage sweep scheduler"
  description  = "Cloud Scheduler calls the storage_sweep function as this account."

  depends_on = [time_sleep.apis_ready]
}

# Cloud Build runs as this account to build the functions' images and the migrations image, instead
# of a default account with broad project roles.
resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "Raven builds"
  description  = "Builds the function images and the migrations image."

  depends_on = [time_sleep.apis_ready]
}

# The migrations job's identity (migrations.tf).
resource "google_service_account" "migrate" {
  account_id   = "${var.name_prefix}-migrate"
  display_name = "Raven migrations"
  description  = "Runs alembic upgrade head against Cloud SQL from the migrations job."

  depends_on = [time_sleep.apis_ready]
}

# --- project-level roles ---------------------------------------------------------------------
#
# Only roles that have no narrower resource to grant on: Cloud SQL connections (kept to this one
# instance by an IAM condition), Vertex AI calls, writing build logs and images.

locals {
  # Every function uses the database.
  database_client_roles = toset([
    "roles/cloudsql.client",       # get the connector's ephemeral certificate and connect to the instance
    "roles/cloudsql.instanceUser", # log in to Postgres as its IAM database user (IAM database authentication)
  ])

  # Cloud SQL's roles are granted on the project (Cloud SQL has no instance-level IAM policy) but hold
  # only for this instance: the condition Google's Cloud SQL sample "instance_iam_condition" uses.
  database_condition = {
    title       = "raven-instance-only"
    description = "Only the Raven Cloud SQL instance."
    expression  = "resource.type == \"sqladmin.googleapis.com/Instance\" && resource.name == \"projects/${var.project_id}/instances/${google_sql_database_instance.main.name}\""
  }

  # Gemini through Vertex AI is used unless a Gemini API key is (secret_versions has GEMINI_API_KEY):
  # with a key, no function holds any Vertex AI role.
  use_vertex_ai = !contains(keys(var.secret_versions), "GEMINI_API_KEY")
  vertex_ai_roles = local.use_vertex_ai ? toset([
    "roles/aiplatform.user", # call Gemini on Vertex AI (no narrower predefined role can generate content)
  ]) : toset([])

  function_project_roles = {
    chat_stream   = setunion(local.database_client_roles, local.vertex_ai_roles) # answers, and summaries it runs inline
    chats_crud    = local.database_client_roles
    upload_url    = local.database_client_roles
    clerk_webhook = local.database_client_roles
    summarize     = setunion(local.database_client_roles, local.vertex_ai_roles) # chat summaries
    storage_sweep = local.database_client_roles                                  # claim and finish storage_deletions rows; no Gemini
  }

  build_project_roles = toset([
    "roles/logging.logWriter",       # write build logs
    "roles/artifactregistry.writer", # push the images it builds (gcf-artifacts and the migrations repository)
  ])

  migrate_project_roles = toset([
    "roles/cloudsql.client", # connect to the instance through the Cloud SQL Auth Proxy
  ])

  project_grants = merge(
    merge([
      for function, roles in local.function_project_roles : {
        for role in roles : "${function}/${role}" => {
          role      = role
          member    = google_service_account.function[function].member
          condition = contains(local.database_client_roles, role) ? local.database_condition : null
        }
      }
    ]...),
    { for role in local.build_project_roles : "build/${role}" => { role = role, member = google_service_account.build.member, condition = null } },
    { for role in local.migrate_project_roles : "migrate/${role}" => { role = role, member = google_service_account.migrate.member, condition = local.database_condition } },
  )
}

resource "google_project_iam_member" "grant" {
  for_each = local.project_grants

  project = var.project_id
  role    = each.value.role
  member  = each.value.member

  dynamic "condition" {
    for_each = each.value.condition == null ? [] : [each.value.condition]
    content {
      title       = condition.value.title
      description = condition.value.description
      expression  = condition.value.expression
    }
  }

  # A grant whose condition changes (e.g. the instance-only condition added to an existing
  # deployment's database roles) is a new binding: create it before removing the old one, so the
  # functions never lose their database access in between.
  lifecycle {
    create_before_destroy = true
  }
}

# --- the uploads bucket ----------------------------------------------------------------------

locals {
  uploads_bucket_roles = {
    chat_stream = toset([
      "roles/storage.objectUser", # resolve_media at an upload's first use: objects.get (type, size, first bytes), objects.create (rewrite it to uploads/), objects.delete (the incoming object, or a refused one)
    ])
    chats_crud = toset([
      "roles/storage.objectUser", # sign GET URLs for stored media (signing needs read), delete a deleted chat's media
    ])
    upload_url = toset([
      "roles/storage.objectCreator", # sign PUT URLs for incoming/: a signed URL carries its signer's permission to create the object
    ])
    clerk_webhook = toset([
      "roles/storage.objectUser", # list and delete every object of a user Clerk reports deleted
    ])
    summarize = toset([]) # summaries are text: no media access
    storage_sweep = toset([
      "roles/storage.objectUser", # list a deleted user's folder and delete the queued objects (list + delete; no narrower predefined role)
    ])
  }

  uploads_bucket_grants = merge([
    for function, roles in local.uploads_bucket_roles : {
      for role in roles : "${function}/${role}" => { function = function, role = role }
    }
  ]...)
}

resource "google_storage_bucket_iam_member" "uploads" {
  for_each = local.uploads_bucket_grants

  bucket = google_storage_bucket.uploads.name
  role   = each.value.role
  member = google_service_account.function[each.value.function].member
}

# Gemini on Vertex AI fetches gs:// media itself, as the Vertex AI service agent: it may read uploads.
# Not with a Gemini API key, where media goes inline and Vertex AI is not used.
resource "google_project_service_identity" "vertex_ai" {
  provider = google-beta
  count    = local.use_vertex_ai ? 1 : 0

  project = var.project_id
  service = "aiplatform.googleapis.com"

  depends_on = [time_sleep.apis_ready]
}

resource "google_storage_bucket_iam_member" "uploads_vertex_ai" {
  count = local.use_vertex_ai ? 1 : 0

  bucket = google_storage_bucket.uploads.name
  role   = "roles/storage.objectViewer" # read media parts given to Gemini as gs:// URIs
  member = "serviceAccount:${google_project_service_identity.vertex_ai[0].email}"
}

# --- the config bucket -----------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "config_chat_stream" {
  bucket = google_storage_bucket.config.name
  role   = "roles/storage.objectViewer" # read the system instruction (SYSTEM_INSTRUCTION_URL)
  member = google_service_account.function["chat_stream"].member
}

# --- URL signing -----------------------------------------------------------------------------
#
# upload_url and chats_crud sign URLs with the IAM signBlob API as themselves (SIGNER_SERVICE_ACCOUNT
# is their own email), so no key file exists anywhere: each may sign as itself, and only as itself.
# A custom role with signBlob alone, rather than Service Account Token Creator, which would also let
# them mint access and ID tokens and sign JWTs as themselves.

locals {
  url_signers = toset(["upload_url", "chats_crud"])
}

resource "google_project_iam_custom_role" "url_signer" {
  # A deleted custom role's id stays reserved for weeks: the suffix lets destroy + apply work.
  role_id     = "${replace(var.name_prefix, "-", "_")}_url_signer_${random_id.name_suffix.hex}"
  title       = "Raven URL signer"
  description = "Sign bytes (V4 signed URLs) as a service account; nothing else."
  permissions = ["iam.serviceAccounts.signBlob"]

  depends_on = [time_sleep.apis_ready]
}

resource "google_service_account_iam_member" "sign_as_self" {
  for_each = local.url_signers

  service_account_id = google_service_account.function[each.key].name
  role               = google_project_iam_custom_role.url_signer.id # iam.serviceAccounts.signBlob on its own account, only
  member             = google_service_account.function[each.key].member
}

# --- Cloud Tasks -----------------------------------------------------------------------------

# chat_stream enqueues summary tasks on this queue only.
resource "google_cloud_tasks_queue_iam_member" "chat_stream_enqueuer" {
  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.summaries.name
  role     = "roles/cloudtasks.enqueuer" # create tasks on the summaries queue
  member   = google_service_account.function["chat_stream"].member
}

# A task carrying an OIDC token for the invoker account may only be created by someone who can act as
# that account: chat_stream, on that account only.
resource "google_service_account_iam_member" "chat_stream_acts_as_invoker" {
  service_account_id = google_service_account.tasks_invoker.name
  role               = "roles/iam.serviceAccountUser" # iam.serviceAccounts.actAs, to name it in a task's OIDC token
  member             = google_service_account.function["chat_stream"].member
}

# The invoker may call summarize, and nothing else. (summarize has no allUsers binding: functions.tf.)
resource "google_cloud_run_v2_service_iam_member" "tasks_invoke_summarize" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function["summarize"].name
  role     = "roles/run.invoker" # call the summarize service with an OIDC token
  member   = google_service_account.tasks_invoker.member
}

# --- Cloud Scheduler -------------------------------------------------------------------------

# The sweep scheduler may call storage_sweep, and nothing else. (storage_sweep has no allUsers
# binding: functions.tf.) Cloud Scheduler's own service agent mints the OIDC token for this account
# through roles/cloudscheduler.serviceAgent, which Google grants it when the API is enabled.
resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_storage_sweep" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function["storage_sweep"].name
  role     = "roles/run.invoker" # call the storage_sweep service with an OIDC token
  member   = google_service_account.sweep_scheduler.member
}

# --- builds ----------------------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "build_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer" # read the function archives and the staged migrations source
  member = google_service_account.build.member
}

# Cloud Functions copies each archive into its own gcf-v2-sources-* / gcf-v2-uploads-* buckets, which
# the build then reads and writes. Google documents storage.objectAdmin for a custom build account;
# the condition keeps it to those Google-managed buckets, away from users' media.
resource "google_project_iam_member" "build_gcf_buckets" {
  project = var.project_id
  role    = "roles/storage.objectAdmin" # read and write the function build's staging objects
  member  = google_service_account.build.member

  condition {
    title       = "gcf-build-buckets-only"
    description = "Only the buckets Cloud Functions manages for builds."
    expression  = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-\") || resource.name.startsWith(\"projects/_/buckets/gcf-v2-uploads-\")"
  }
}

# --- migrations ------------------------------------------------------------------------------

resource "google_secret_manager_secret_iam_member" "migrate_reads_password" {
  secret_id = google_secret_manager_secret.migrator_password.id
  role      = "roles/secretmanager.secretAccessor" # the migrator database user's password
  member    = google_service_account.migrate.member
}
