# Secrets, in Secret Manager. The functions receive them as environment variables through
# secret_environment_variables (never as plain environment variables), each pinned to a version this
# configuration created; no secret appears in an output.
#
# Nothing secret is in Terraform's plan or state. The values come from ephemeral, sensitive variables
# (TF_VAR_*, README.md: Secrets) and are written with the write-only argument secret_data_wo, which
# the provider sends to Secret Manager and never stores. Terraform therefore cannot see a value change:
# var.secret_versions holds one number per secret, and a version is written when its number changes
# (rotate: give the new value and bump the number; README.md: Operations).
#
# Rotation without an outage: a new version is created before the old one is destroyed
# (create_before_destroy), the functions that read it move to the new version in between, and the old
# version goes only once they have (README.md: Operations, Rotate a secret).
#
# Which secrets exist is var.secret_versions' keys, not whether a value is given: an ephemeral value
# cannot decide what is created. CLERK_WEBHOOK_SECRET always exists (clerk_webhook needs it).

locals {
  # Ephemeral: only ever passed to write-only arguments.
  secret_values = {
    CLERK_JWT_KEY        = var.clerk_jwt_key
    CLERK_SECRET_KEY     = var.clerk_secret_key
    CLERK_WEBHOOK_SECRET = var.clerk_webhook_secret
    GEMINI_API_KEY       = var.gemini_api_key
  }

  # The variable that holds each secret's value, for messages.
  secret_variables = {
    CLERK_JWT_KEY        = "clerk_jwt_key"
    CLERK_SECRET_KEY     = "clerk_secret_key"
    CLERK_WEBHOOK_SECRET = "clerk_webhook_secret"
    GEMINI_API_KEY       = "gemini_api_key"
  }

  # Which functions read each secret, as the environment variable of the same name. Each secret is
  # readable (roles/secretmanager.secretAccessor on that secret) by exactly these functions.
  secret_consumers = {
    CLERK_JWT_KEY        = ["chat_stream", "chats_crud", "upload_url"] # verify Clerk session tokens
    CLERK_SECRET_KEY     = ["chat_stream", "chats_crud", "upload_url"] # Clerk Backend API calls
    CLERK_WEBHOOK_SECRET = ["clerk_webhook"]                           # verify Clerk's webhook signatures
    GEMINI_API_KEY       = ["chat_stream", "summarize"]                # Gemini API instead of Vertex AI
  }

  # The secrets this deployment has.
  secrets = toset(keys(var.secret_versions))

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

  depends_on = [time_sleep.apis_ready]
}

resource "google_secret_manager_secret_version" "secret" {
  for_each = local.secrets

  secret                 = google_secret_manager_secret.secret[each.key].id
  secret_data_wo         = local.secret_values[each.key]
  secret_data_wo_version = var.secret_versions[each.key]

  lifecycle {
    # A new version (a bumped number) is created, the functions move to it, then the old one goes.
    create_before_destroy = true

    # The value is not stored, so it must be given on every plan and apply that may write it; a
    # missing one would otherwise be written as an empty secret.
    precondition {
      condition     = local.secret_values[each.key] != null
      error_message = "secret_versions has ${each.key}: give its value in TF_VAR_${local.secret_variables[each.key]} (it is never stored, so every plan and apply needs it)."
    }
  }
}

resource "google_secret_manager_secret_iam_member" "function" {
  for_each = local.secret_grants

  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor" # read this one secret at instance start
  member    = google_service_account.function[each.value.function].member
}

# The migrator database user's password (database.tf): generated anew on every run, never stored,
# and written, to the database user and to this secret in the same apply, only when
# var.migrator_password_version changes.
ephemeral "random_password" "migrator" {
  length  = 32
  special = false
}

resource "google_secret_manager_secret" "migrator_password" {
  secret_id = "${var.name_prefix}-db-migrator-password"

  replication {
    auto {}
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_secret_manager_secret_version" "migrator_password" {
  secret                 = google_secret_manager_secret.migrator_password.id
  secret_data_wo         = ephemeral.random_password.migrator.result
  secret_data_wo_version = var.migrator_password_version

  lifecycle {
    create_before_destroy = true
  }
}
