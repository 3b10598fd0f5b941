# The Google APIs this deployment uses. They stay enabled on destroy: other things in the project
# may use them too, and disabling an API can take down resources Terraform does not manage.

locals {
  apis = toset([
    "aiplatform.googleapis.com",           # Gemini on Vertex AI
    "artifactregistry.googleapis.com",     # function images, the migrations image
    "cloudbuild.googleapis.com",           # builds the functions from source, and the migrations image
    "cloudfunctions.googleapis.com",       # Cloud Run functions (gen2)
    "cloudresourcemanager.googleapis.com", # project IAM bindings
    "cloudscheduler.googleapis.com",       # the periodic storage_sweep call
    "cloudtasks.googleapis.com",           # the summaries queue
    "compute.googleapis.com",              # VPC, load balancer
    "iam.googleapis.com",                  # service accounts, the custom roles
    "iamcredentials.googleapis.com",       # signBlob: V4 signed upload and media URLs without keys
    "logging.googleapis.com",              # function and build logs
    "run.googleapis.com",                  # the services behind the functions, the migrations job
    "secretmanager.googleapis.com",        # Clerk keys, webhook secret, database password
    "servicenetworking.googleapis.com",    # private services access for Cloud SQL's private IP
    "sqladmin.googleapis.com",             # Cloud SQL, and the connector's ephemeral certificates
    "storage.googleapis.com",              # buckets
  ])
}

resource "google_project_service" "api" {
  for_each = local.apis

  project                    = var.project_id
  service                    = each.value
  disable_on_destroy         = false
  disable_dependent_services = false
}

# An API answers "not enabled" and its service agents "do not exist" for a while after enablement
# returns. Everything that calls an API depends on this wait instead of on the enablement itself, so
# the first apply does not race the propagation. It waits again only when an API is added.
resource "time_sleep" "apis_ready" {
  create_duration = "90s"

  triggers = {
    apis = join(",", sort(tolist(local.apis)))
  }

  depends_on = [time_sleep.apis_ready]
}
