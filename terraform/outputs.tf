# What the frontend, Clerk and operators need. No secret is ever output.

output "function_urls" {
  description = "Each function's URL, by function folder name. summarize's only accepts Cloud Tasks' OIDC tokens, storage_sweep's only Cloud Scheduler's."
  value       = { for name, function in google_cloudfunctions2_function.function : name => function.url }
}

output "chat_stream_url" {
  description = "POST /chat (server-sent events)."
  value       = google_cloudfunctions2_function.function["chat_stream"].url
}

output "chats_crud_url" {
  description = "/api/chats and /api/chats/*."
  value       = google_cloudfunctions2_function.function["chats_crud"].url
}

output "upload_url_url" {
  description = "POST /api/upload-url."
  value       = google_cloudfunctions2_function.function["upload_url"].url
}

output "clerk_webhook_url" {
  description = "Clerk webhook endpoint (POST /clerk-webhook). With the load balancer, https://<domain>/clerk-webhook works too."
  value       = google_cloudfunctions2_function.function["clerk_webhook"].url
}

output "summarize_url" {
  description = "The summarize function's URL, as Cloud Tasks calls it (SUMMARIZE_URL)."
  value       = local.summarize_url
}

output "storage_sweep_job" {
  description = "The Cloud Scheduler job that calls storage_sweep (run it now: gcloud scheduler jobs run <name> --location=<region>)."
  value       = google_cloud_scheduler_job.storage_sweep.name
}

output "backend_url" {
  description = "With enable_load_balancer: https://<domain>, every API path under one origin (the frontend's NEXT_PUBLIC_BACKEND_URL). Null otherwise."
  value       = var.enable_load_balancer ? "https://${var.domain}" : null
}

output "load_balancer_ip" {
  description = "With enable_load_balancer: the IPv4 address the domain's DNS A record must point at (the certificate is issued once it does)."
  value       = var.enable_load_balancer ? google_compute_global_address.load_balancer[0].address : null
}

output "uploads_bucket" {
  description = "User uploads (GCS_BUCKET_NAME)."
  value       = google_storage_bucket.uploads.name
}

output "sources_bucket" {
  description = "Function source archives and Cloud Build staging."
  value       = google_storage_bucket.sources.name
}

output "config_bucket" {
  description = "Holds the system instruction."
  value       = google_storage_bucket.config.name
}

output "system_instruction_url" {
  description = "SYSTEM_INSTRUCTION_URL."
  value       = local.shared_env.SYSTEM_INSTRUCTION_URL
}

output "tasks_queue" {
  description = "The summaries queue, as a full resource name (TASKS_QUEUE)."
  value       = google_cloud_tasks_queue.summaries.id
}

output "instance_connection_name" {
  description = "Cloud SQL instance connection name (INSTANCE_CONNECTION_NAME), for the connector or the Auth Proxy."
  value       = google_sql_database_instance.main.connection_name
}

output "database_max_connections" {
  description = "Cloud SQL's max_connections: the ceiling var.database_max_connections."
  value       = var.database_max_connections
}

output "database_connections_needed" {
  description = "What the functions' pools can open at most, plus the headroom: must stay under database_max_connections."
  value       = local.database_connections_needed
}

output "database_iam_users" {
  description = "The functions' IAM database users (DB_IAM_USER), granted raven_app by the migrations job."
  value       = { for name, user in google_sql_user.function : name => user.name }
}

output "service_accounts" {
  description = "Every service account this deployment created, by workload."
  value = merge(
    { for name, account in google_service_account.function : name => account.email },
    {
      tasks_invoker   = google_service_account.tasks_invoker.email
      sweep_scheduler = google_service_account.sweep_scheduler.email
      build           = google_service_account.build.email
      migrate         = google_service_account.migrate.email
    },
  )
}

# Read by terraform/migrations/migrate.sh.

output "project_id" {
  description = "The project."
  value       = var.project_id
}

output "region" {
  description = "The region."
  value       = var.region
}

output "migrations_job" {
  description = "The Cloud Run job that runs the migrations (make migrate-cloud)."
  value       = google_cloud_run_v2_job.migrate.name
}

output "images_repository" {
  description = "Artifact Registry repository for the migrations image."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "build_service_account" {
  description = "The account Cloud Build runs as (the form gcloud builds submit --service-account takes)."
  value       = google_service_account.build.id
}

output "cloudbuild_staging_dir" {
  description = "Where gcloud builds submit stages the migrations source."
  value       = "gs://${google_storage_bucket.sources.name}/cloudbuild/source"
}
