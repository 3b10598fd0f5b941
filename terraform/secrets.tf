# Secrets, in Secret Manager. The functions receive them as environment variables through
# secret_environment_variables (never as plain environment variables), each pinned to the version this
# apply created; no secret appears in an output.
#
# Values come from sensitive variables (terraform.tfvars or TF_VAR_*, README.md: Secrets): one apply
# creates the secret, its version, the grants and the functions that read it, in the right order.
# Changing a value and applying adds a version and rolls the functions that read it onto a new
# revision. The values are therefore in Terraform's state: keep the state in a private bucket.
#
# A secret exists only when its value is given: CLERK_WEBHOOK_SECRET always (it is required),
# the others are optional.

locals {
  secret_values = {
    CLERK_JWT_KEY        = var.clerk_jwt_key
    CLERK_SECRET_KEY     = var.clerk_secret_key
    CLERK_WEBHOOK_SECRET = var.clerk_webhook_secret
    GEMINI_API_KEY       = var.gemini_api_key
  }

  # Which functions read each secret, as the environment variable of the same name. Each secret is
  # readable (roles/secretmanager.secretAccessor on that secret) by exactly these functions.
  secret_consumers = {
    CLERK_JWT_KEY        = ["chat_stream", "chats_crud", "upload_url"] # verify Clerk session tokens
    CLERK_SECRET_KEY     = ["chat_stream", "chats_crud", "upload_url"] # Clerk Backend API calls
    CLERK_WEBHOOK_SECRET = ["clerk_webhook"]                           # verify Clerk's webhook signatures
    GEMINI_API_KEY       = ["chat_stream", "summarize"]                # Gemini API instead of Vertex AI
  }

  # The secrets given a value. nonsensitive() reveals only whether each one was set, never the value.
  secrets = toset([
    for name, value in local.secret_values : name if nonsensitive(value != null)
  ])

  # Per function: the secrets it receives.
  function_secrets = {
    for function in keys(local.function_defaults) : function => toset([
      for name, consumers in local.secret_consumers : name
      if contains(consumers, function) && contains(local.secrets, name)
    ])
  }

  secret_grants = merge([
    for name, consumers in local.secret_consumers : {
      for function in consumers : "${name}/${function}" => { secret = name, function = function }
    } if contains(local.secrets, name)
  ]...)
}

resource "google_secret_manager_secret" "secret" {
  for_each = local.secrets

  secret_id = "${var.name_prefix}-${lower(replace(each.key, "_", "-"))}"

  replication {
    auto {}
  }

  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "secret" {
  for_each = local.secrets

  secret      = google_secret_manager_secret.secret[each.key].id
  secret_data = local.secret_values[each.key]
}

resource "google_secret_manager_secret_iam_member" "function" {
  for_each = local.secret_grants

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor" # read this one secret at instance start
  member    = google_service_account.function[each.value.function].member
}

# The migrator database user's password (database.tf), generated, never typed by anyone.
resource "google_secret_manager_secret" "migrator_password" {
  secret_id = "${var.name_prefix}-db-migrator-password"

  replication {
    auto {}
  }

  depends_on = [google_project_service.api]
}

resource "google_secret_manager_secret_version" "migrator_password" {
  secret      = google_secret_manager_secret.migrator_password.id
  secret_data = random_password.migrator.result
}
