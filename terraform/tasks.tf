# The Cloud Tasks queue for rolling chat summaries. chat_stream enqueues an HTTP task for SUMMARIZE_URL
# with an OIDC token for the invoker account (TASKS_INVOKER_SERVICE_ACCOUNT); Cloud Tasks calls
# summarize's public URL with it, and Cloud Run lets it in because only that account holds
# roles/run.invoker on summarize (iam.tf). Rate limits protect Gemini quota and the database;
# retries back off exponentially.

# The name carries a random suffix (main.tf): a deleted queue's name may stay blocked for up to 3 days
# (Cloud Tasks' tombstone window), and the suffix lets destroy + apply work at once.
resource "google_cloud_tasks_queue" "summaries" {
  name     = "${var.name_prefix}-summaries-${random_id.name_suffix.hex}"
  location = var.region

  rate_limits {
    max_dispatches_per_second = var.summaries_queue.max_dispatches_per_second
    max_concurrent_dispatches = var.summaries_queue.max_concurrent_dispatches
  }

  retry_config {
    max_attempts       = var.summaries_queue.max_attempts
    min_backoff        = "${var.summaries_queue.min_backoff_seconds}s"
    max_backoff        = "${var.summaries_queue.max_backoff_seconds}s"
    max_doublings      = var.summaries_queue.max_doublings
    max_retry_duration = "${var.summaries_queue.max_retry_duration_hours * 3600}s"
  }

  stackdriver_logging_config {
    sampling_ratio = 1.0 # log every dispatch: summaries are few and failures worth seeing
  }

  depends_on = [time_sleep.apis_ready]
}
