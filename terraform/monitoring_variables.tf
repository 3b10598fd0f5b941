# Monitoring inputs (monitoring.tf): who is notified, and each alert's threshold. README.md,
# "Operations", says what each alert means and what to check first.

variable "alert_email" {
  type        = string
  description = "Email address notified by every alert policy; null creates the policies without a notification channel (they still show in Cloud Monitoring)."
  default     = null
}

variable "alert_5xx_ratio" {
  type        = number
  description = "Alert when a function answers more than this fraction of its requests with 5xx for 5 minutes."
  default     = 0.02
}

variable "alert_ttft_p95_ms" {
  type        = number
  description = "Alert when the p95 time to first token (request received -> first chunk sent) stays above this many milliseconds for 10 minutes."
  default     = 5000
}

variable "alert_model_error_ratio" {
  type        = number
  description = "Alert when more than this fraction of the turns that reached the model fail with a model error for 5 minutes."
  default     = 0.05
}

variable "alert_queue_delay_seconds" {
  type        = number
  description = "Alert when a summary task has waited more than this many seconds in its queue."
  default     = 600
}

variable "alert_database_connections_ratio" {
  type        = number
  description = "Alert when Cloud SQL's connections stay above this fraction of max_connections for 5 minutes."
  default     = 0.8
}

variable "alert_storage_pending_seconds" {
  type        = number
  description = "Alert when the oldest queued storage deletion is older than this many seconds after a sweep."
  default     = 3600
}
