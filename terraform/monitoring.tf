# Observability as code: log-based metrics from the functions' structured events, a Cloud Monitoring
# dashboard (dashboard.json.tftpl: the dashboard's JSON, a template so that metric names, ids and
# thresholds follow the variables) and alert policies. The functions import no metrics SDK: every number
# below comes from the JSON lines they already write (shared/telemetry.py) or from Google's own
# metrics (Cloud Run, Cloud Tasks, Cloud SQL). tests/test_monitoring.py runs each metric's filter
# and extractors against lines the local stack really writes.

resource "google_project_service" "monitoring" {
  project                    = var.project_id
  service                    = "monitoring.googleapis.com" # dashboards, alert policies, notification channels
  disable_on_destroy         = false
  disable_dependent_services = false
}

locals {
  # Metric names cannot hold every character a prefix may: raven-dev -> raven_dev_chat_turns.
  metric_prefix = replace(var.name_prefix, "-", "_")

  # Every line our functions write, and nothing else in the project.
  function_logs = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^${var.name_prefix}-\""
  turn_logs     = "${local.function_logs} AND jsonPayload.event=\"chat_turn\""
  task_logs     = "${local.function_logs} AND jsonPayload.event=\"task\""
  sweep_logs    = "${local.function_logs} AND jsonPayload.event=\"storage_sweep\""

  # name => what it counts or measures. A counter has no value_extractor; a distribution extracts
  # one number per line into exponential buckets (scale * growth^i, i < count).
  log_metrics = {
    chat_turns = {
      description = "Chat turns by outcome (ok, client_left, model_error:<kind>, rate_limited...), model and finish reason."
      filter      = local.turn_logs
      unit        = "1"
      value       = null
      buckets     = null
      labels = {
        outcome       = "EXTRACT(jsonPayload.outcome)"
        model         = "EXTRACT(jsonPayload.model)"
        finish_reason = "EXTRACT(jsonPayload.finish_reason)"
      }
    }
    model_errors = {
      description = "Chat turns the model failed, by kind (busy = 429, unavailable = 5xx/timeout, refused = other 4xx)."
      filter      = "${local.turn_logs} AND jsonPayload.outcome=~\"^model_error:\""
      unit        = "1"
      value       = null
      buckets     = null
      labels = {
        kind  = "REGEXP_EXTRACT(jsonPayload.outcome, \"^model_error:(.+)$\")"
        model = "EXTRACT(jsonPayload.model)"
      }
    }
    turn_ttft = {
      description = "Time to first token: request received -> first chunk written to the client (ms)."
      filter      = "${local.turn_logs} AND jsonPayload.ttft_ms:*"
      unit        = "ms"
      value       = "EXTRACT(jsonPayload.ttft_ms)"
      buckets     = { scale = 50, growth = 1.5, count = 20 }
      labels      = { model = "EXTRACT(jsonPayload.model)" }
    }
    turn_model_ttft = {
      description = "The model's own time to first token: model call -> first chunk from the model (ms)."
      filter      = "${local.turn_logs} AND jsonPayload.model_ttft_ms:*"
      unit        = "ms"
      value       = "EXTRACT(jsonPayload.model_ttft_ms)"
      buckets     = { scale = 50, growth = 1.5, count = 20 }
      labels      = { model = "EXTRACT(jsonPayload.model)" }
    }
    turn_duration = {
      description = "Whole turn: request received -> stream ended (ms)."
      filter      = local.turn_logs
      unit        = "ms"
      value       = "EXTRACT(jsonPayload.turn_ms)"
      buckets     = { scale = 100, growth = 1.5, count = 20 }
      labels      = { outcome = "EXTRACT(jsonPayload.outcome)" }
    }
    turn_input_tokens = {
      description = "Input tokens of each turn the model answered, as the model reported them."
      filter      = "${local.turn_logs} AND jsonPayload.input_tokens:*"
      unit        = "1"
      value       = "EXTRACT(jsonPayload.input_tokens)"
      buckets     = { scale = 16, growth = 2, count = 17 }
      labels      = { model = "EXTRACT(jsonPayload.model)" }
    }
    turn_output_tokens = {
      description = "Output tokens of each turn the model answered, as the model reported them."
      filter      = "${local.turn_logs} AND jsonPayload.output_tokens:*"
      unit        = "1"
      value       = "EXTRACT(jsonPayload.output_tokens)"
      buckets     = { scale = 16, growth = 2, count = 17 }
      labels      = { model = "EXTRACT(jsonPayload.model)" }
    }
    tasks = {
      description = "Background tasks (summary...) by outcome: stored, skipped, dropped, retry (429/503 back to the queue), error."
      filter      = local.task_logs
      unit        = "1"
      value       = null
      buckets     = null
      labels = {
        task    = "EXTRACT(jsonPayload.task)"
        outcome = "EXTRACT(jsonPayload.outcome)"
      }
    }
    task_duration = {
      description = "How long each background task ran (ms)."
      filter      = local.task_logs
      unit        = "ms"
      value       = "EXTRACT(jsonPayload.duration_ms)"
      buckets     = { scale = 100, growth = 1.5, count = 20 }
      labels      = { task = "EXTRACT(jsonPayload.task)" }
    }
    task_queue_delay = {
      description = "How long a task waited in its queue past its schedule time (X-CloudTasks-TaskETA), in seconds."
      filter      = "${local.task_logs} AND jsonPayload.queue_delay_s:*"
      unit        = "s"
      value       = "EXTRACT(jsonPayload.queue_delay_s)"
      buckets     = { scale = 1, growth = 2, count = 16 }
      labels      = { task = "EXTRACT(jsonPayload.task)" }
    }
    media_checks = {
      description = "Checks of uploaded media before a model sees it: ok, or the refusal's error code."
      filter      = "${local.function_logs} AND jsonPayload.event=\"media_check\""
      unit        = "1"
      value       = null
      buckets     = null
      labels      = { outcome = "EXTRACT(jsonPayload.outcome)" }
    }
    storage_deletions_pending = {
      description = "Rows left in storage_deletions after each storage sweep."
      filter      = local.sweep_logs
      unit        = "1"
      value       = "EXTRACT(jsonPayload.pending)"
      buckets     = { scale = 1, growth = 2, count = 20 }
      labels      = {}
    }
    storage_deletions_oldest = {
      description = "Age of the oldest row left in storage_deletions after a storage sweep (s)."
      filter      = "${local.sweep_logs} AND jsonPayload.oldest_pending_s:*"
      unit        = "s"
      value       = "EXTRACT(jsonPayload.oldest_pending_s)"
      buckets     = { scale = 60, growth = 2, count = 12 }
      labels      = {}
    }
  }

  # Each metric's type, for the dashboard and the alerts.
  metric_types = {
    for name, metric in local.log_metrics : name => "logging.googleapis.com/user/${local.metric_prefix}_${name}"
  }

  function_service_filter = "resource.type = \"cloud_run_revision\" AND resource.label.service_name = starts_with(\"${var.name_prefix}-\")"
  database_id             = "${var.project_id}:${google_sql_database_instance.main.name}"
}

resource "google_logging_metric" "event" {
  for_each = local.log_metrics

  name        = "${local.metric_prefix}_${each.key}"
  description = each.value.description
  filter      = each.value.filter

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = each.value.value == null ? "INT64" : "DISTRIBUTION"
    unit         = each.value.unit
    display_name = "${var.name_prefix} ${replace(each.key, "_", " ")}"

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key        = labels.key
        value_type = "STRING"
      }
    }
  }

  value_extractor  = each.value.value
  label_extractors = each.value.labels

  dynamic "bucket_options" {
    for_each = each.value.buckets == null ? [] : [each.value.buckets]
    content {
      exponential_buckets {
        num_finite_buckets = bucket_options.value.count
        growth_factor      = bucket_options.value.growth
        scale              = bucket_options.value.scale
      }
    }
  }

  depends_on = [google_project_service.api]
}

resource "google_monitoring_dashboard" "operations" {
  dashboard_json = templatefile("${path.module}/dashboard.json.tftpl", {
    title             = "${var.name_prefix} backend"
    name_prefix       = var.name_prefix
    metric            = local.metric_types
    prom_prefix       = "logging_googleapis_com:user_${local.metric_prefix}"
    queue_id          = google_cloud_tasks_queue.summaries.name
    database_id       = local.database_id
    max_db_conns      = var.database_max_connections
    alert_5xx_ratio   = var.alert_5xx_ratio
    alert_ttft_p95_ms = var.alert_ttft_p95_ms
  })

  depends_on = [google_project_service.monitoring, google_logging_metric.event]
}

# --- alerts ------------------------------------------------------------------------------------

resource "google_monitoring_notification_channel" "email" {
  count = var.alert_email == null ? 0 : 1

  display_name = "${var.name_prefix} operators"
  type         = "email"
  labels = {
    email_address = var.alert_email
  }

  depends_on = [google_project_service.monitoring]
}

locals {
  alert_channels = google_monitoring_notification_channel.email[*].id

  # Each alert: a threshold on one metric (or on the ratio of two, with a denominator), and
  # what it means with the first thing to check (README.md, "Operations", says more). Every
  # entry names every field, so the map's values share one type.
  alerts = {
    errors_5xx = {
      title       = "5xx rate above ${var.alert_5xx_ratio * 100}%"
      condition   = "5xx / all requests, per function, over 5 minutes"
      filter      = "metric.type = \"run.googleapis.com/request_count\" AND ${local.function_service_filter} AND metric.label.response_code_class = \"5xx\""
      denominator = "metric.type = \"run.googleapis.com/request_count\" AND ${local.function_service_filter}"
      threshold   = var.alert_5xx_ratio
      duration    = "300s"
      period      = "60s"
      aligner     = "ALIGN_RATE"
      reducer     = "REDUCE_SUM"
      group_by    = ["resource.label.service_name"]
      runbook     = "A function answers more than ${var.alert_5xx_ratio * 100}% of its requests with 5xx. First: Logs Explorer, severity>=ERROR for that service (\"unhandled error\" lines carry the stack trace); then the database (503 database_unavailable) and the last deploy."
    }
    ttft = {
      title       = "time to first token p95 above ${var.alert_ttft_p95_ms} ms"
      condition   = "TTFT p95 over 10 minutes"
      filter      = "metric.type = \"${local.metric_types.turn_ttft}\" AND resource.type = \"cloud_run_revision\""
      denominator = null
      threshold   = var.alert_ttft_p95_ms
      duration    = "600s"
      period      = "300s"
      aligner     = "ALIGN_DELTA"
      reducer     = "REDUCE_PERCENTILE_95"
      group_by    = []
      runbook     = "Users wait more than ${var.alert_ttft_p95_ms} ms for the first token (p95). First: the dashboard's model TTFT (is it Gemini itself?), then chat_stream's instance count and CPU (saturated instances queue chunks), then Cloud SQL CPU."
    }
    model_errors = {
      title     = "model errors above ${var.alert_model_error_ratio * 100}% of turns"
      condition = "model errors / turns that reached the model, over 5 minutes"
      filter    = "metric.type = \"${local.metric_types.model_errors}\" AND resource.type = \"cloud_run_revision\""
      # Turns refused before the model was called (rate limits, bad input) are not counted.
      denominator = "metric.type = \"${local.metric_types.chat_turns}\" AND resource.type = \"cloud_run_revision\" AND NOT metric.label.outcome = one_of(\"rate_limited\", \"rejected\", \"unavailable\")"
      threshold   = var.alert_model_error_ratio
      duration    = "300s"
      period      = "60s"
      aligner     = "ALIGN_RATE"
      reducer     = "REDUCE_SUM"
      group_by    = []
      runbook     = "More than ${var.alert_model_error_ratio * 100}% of the turns that reached Gemini failed. First: the model errors by kind: busy means quota (429: raise it or lower traffic), unavailable means Gemini 5xx/timeouts (check the Vertex AI status page), refused means the requests themselves (a bad model name or setting after a deploy)."
    }
    queue_delay = {
      title       = "summary tasks waiting over ${var.alert_queue_delay_seconds} s"
      condition   = "oldest summary task's wait (p99 of queue delays)"
      filter      = "metric.type = \"${local.metric_types.task_queue_delay}\" AND resource.type = \"cloud_run_revision\""
      denominator = null
      threshold   = var.alert_queue_delay_seconds
      duration    = "0s"
      period      = "300s"
      aligner     = "ALIGN_DELTA"
      reducer     = "REDUCE_PERCENTILE_99"
      group_by    = []
      runbook     = "Summary tasks waited more than ${var.alert_queue_delay_seconds} s in the queue. First: the summaries queue in Cloud Tasks (paused? max dispatches?), then summarize's task outcomes (retry = Gemini busy/unavailable or database down)."
    }
    db_connections = {
      title       = "Cloud SQL connections above ${var.alert_database_connections_ratio * 100}% of max_connections"
      condition   = "connections (all databases of the instance)"
      filter      = "metric.type = \"cloudsql.googleapis.com/database/postgresql/num_backends\" AND resource.type = \"cloudsql_database\" AND resource.label.database_id = \"${local.database_id}\""
      denominator = null
      threshold   = floor(var.alert_database_connections_ratio * var.database_max_connections)
      duration    = "300s"
      period      = "60s"
      aligner     = "ALIGN_MEAN"
      reducer     = "REDUCE_SUM"
      group_by    = []
      runbook     = "Cloud SQL holds more than ${var.alert_database_connections_ratio * 100}% of max_connections (${var.database_max_connections}). First: which functions scaled out (instance count); max_instances x WORKERS x DB_POOL_SIZE must stay under max_connections (database.tf)."
    }
    storage_oldest = {
      title       = "storage deletions pending over ${var.alert_storage_pending_seconds} s"
      condition   = "oldest queued deletion after each sweep"
      filter      = "metric.type = \"${local.metric_types.storage_deletions_oldest}\" AND resource.type = \"cloud_run_revision\""
      denominator = null
      threshold   = var.alert_storage_pending_seconds
      duration    = "0s"
      period      = "900s" # the sweep runs every 10 minutes
      aligner     = "ALIGN_DELTA"
      reducer     = "REDUCE_PERCENTILE_99"
      group_by    = []
      runbook     = "Bucket objects of deleted chats or users have waited more than ${var.alert_storage_pending_seconds} s to be deleted. First: storage_sweep's logs (\"storage cleanup failed\", its Cloud Scheduler job's last runs), and the storage_deletions rows' attempts (a row that keeps failing backs off exponentially)."
    }
  }
}

resource "google_monitoring_alert_policy" "alert" {
  for_each = local.alerts

  display_name          = "${var.name_prefix}: ${each.value.title}"
  combiner              = "OR"
  notification_channels = local.alert_channels

  conditions {
    display_name = each.value.condition
    condition_threshold {
      filter             = each.value.filter
      denominator_filter = each.value.denominator
      comparison         = "COMPARISON_GT"
      threshold_value    = each.value.threshold
      duration           = each.value.duration
      aggregations {
        alignment_period     = each.value.period
        per_series_aligner   = each.value.aligner
        cross_series_reducer = each.value.reducer
        group_by_fields      = length(each.value.group_by) > 0 ? each.value.group_by : null
      }
      # A ratio's denominator is aligned and reduced as its numerator is.
      dynamic "denominator_aggregations" {
        for_each = each.value.denominator == null ? [] : [each.value]
        content {
          alignment_period     = denominator_aggregations.value.period
          per_series_aligner   = denominator_aggregations.value.aligner
          cross_series_reducer = denominator_aggregations.value.reducer
          group_by_fields      = length(denominator_aggregations.value.group_by) > 0 ? denominator_aggregations.value.group_by : null
        }
      }
    }
  }

  documentation {
    content   = each.value.runbook
    mime_type = "text/markdown"
  }

  # The log-based metrics some alerts read must exist first.
  depends_on = [google_project_service.monitoring, google_logging_metric.event]
}

# The alerts were one resource each before; their state moves to the map's keys, not recreated.
moved {
  from = google_monitoring_alert_policy.errors_5xx
  to   = google_monitoring_alert_policy.alert["errors_5xx"]
}

moved {
  from = google_monitoring_alert_policy.ttft
  to   = google_monitoring_alert_policy.alert["ttft"]
}

moved {
  from = google_monitoring_alert_policy.model_errors
  to   = google_monitoring_alert_policy.alert["model_errors"]
}

moved {
  from = google_monitoring_alert_policy.queue_delay
  to   = google_monitoring_alert_policy.alert["queue_delay"]
}

moved {
  from = google_monitoring_alert_policy.db_connections
  to   = google_monitoring_alert_policy.alert["db_connections"]
}

moved {
  from = google_monitoring_alert_policy.storage_oldest
  to   = google_monitoring_alert_policy.alert["storage_oldest"]
}
