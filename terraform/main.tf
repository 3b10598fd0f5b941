# Names and values every file shares.

data "google_project" "this" {
  project_id = var.project_id
}

# Names a deleted resource keeps reserved for a while get this suffix (the summaries queue: up to 3
# days; the URL signer custom role: weeks), so that destroy + apply works at once. It is drawn anew
# only with a new state.
resource "random_id" "name_suffix" {
  byte_length = 2
}

locals {
  labels = merge(var.labels, {
    app        = "raven"
    managed-by = "terraform"
  })

  # Resource names per function folder: chat_stream -> raven-chat-stream (the function, its Cloud Run
  # service and its service account).
  resource_names = {
    for function in keys(local.function_defaults) :
    function => "${var.name_prefix}-${replace(function, "_", "-")}"
  }

  vertex_location = coalesce(var.vertex_location, var.region)

  # With no JWT key given, verify Clerk's tokens against its public JWKS under the issuer.
  clerk_jwks_url = (
    var.clerk_jwks_url != null ? var.clerk_jwks_url
    : !contains(keys(var.secret_versions), "CLERK_JWT_KEY") ? "${var.clerk_issuer}/.well-known/jwks.json"
    : null
  )
}
