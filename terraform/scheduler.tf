# The periodic storage sweep. Deleting a chat or a user queues its bucket objects in
# storage_deletions and starts the bucket work in a background thread of the request that did it
# (shared/deletions.py). On Cloud Run that thread may be throttled once the request ends, or lost with
# its instance, and a failed deletion waits for its backoff: this job calls storage_sweep (POST /)
# every 10 minutes so the queue drains even when no further deletion happens.
#
# Cloud Scheduler attaches an OIDC token for the sweep scheduler account (iam.tf), the only account
# holding roles/run.invoker on storage_sweep; storage_sweep has no allUsers binding, so Cloud Run turns
# away every other caller before the function runs.

locals {
  # storage_sweep's own run.app URL (the service's URI, as Cloud Run reports it), and the audience
  # Cloud Run checks the token against.
  storage_sweep_url = google_cloudfunctions2_function.function["storage_sweep"].service_config[0].uri
}

resource "google_cloud_scheduler_job" "storage_sweep" {
  name        = "${var.name_prefix}-storage-sweep"
  region      = var.region
  description = "Drains storage_deletions: POST / on the storage_sweep function."
  schedule    = var.storage_sweep_schedule
  time_zone   = "Etc/UTC"

  # How long Cloud Scheduler waits for the answer: the function's timeout (300 s by default), which
  # already covers its 240 s sweep budget. Cloud Scheduler accepts 15 s to 30 minutes.
  attempt_deadline = "${min(max(local.functions.storage_sweep.timeout_seconds, 15), 1800)}s"

  # No retries: a failed sweep leaves its rows queued (claimed ones come due again when their lease
  # ends), and the next scheduled call comes within minutes.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${local.storage_sweep_url}/"

    oidc_token {
      service_account_email = google_service_account.sweep_scheduler.email
      audience              = local.storage_sweep_url
    }
  }

  depends_on = [
    time_sleep.apis_ready,
    google_cloud_run_v2_service_iam_member.scheduler_invokes_storage_sweep,
  ]
}
