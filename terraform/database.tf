# Cloud SQL for PostgreSQL 16, the database `raven`, and its users.
#
# Network: private IP only by default (network.tf peers Google's service network into our VPC). The
# functions reach it by Direct VPC egress and the Cloud SQL Python connector (DB_IP_TYPE=PRIVATE); the
# migrations job by the Cloud SQL Auth Proxy from the same subnet. Nothing on the internet can reach
# Postgres. var.database_public_ip adds a public IP with no authorized networks, usable only through the
# connector or the Auth Proxy (IAM-authorized, mTLS), for operators who want psql from their machine.
#
# Authentication: each function logs in as its own service account (IAM database authentication, no
# password): a CLOUD_IAM_SERVICE_ACCOUNT user named after the account's email without
# ".gserviceaccount.com", which is what DB_IAM_USER holds. IAM users start with no privileges on any
# table; the migrations job (migrations.tf) owns the schema and grants them the `raven_app` role after
# every upgrade.

resource "random_id" "database_suffix" {
  # A deleted instance's name cannot be reused for a week: a suffix lets destroy + apply work.
  byte_length = 2
}

locals {
  # What the functions' pools can open at most: every worker process (workers per instance) may
  # hold db_pool_size connections, in at most max_instances instances at once, plus headroom for the
  # migrations job, operators and Cloud SQL itself. It must fit under var.database_max_connections (precondition below), which is what the
  # instance is configured with: PostgreSQL applies max_connections only at a restart, so the flag
  # follows a ceiling the operator sets, not the sizing, and a resize never restarts the database.
  database_connections_needed = sum([
    for name, function in local.functions : function.max_instances * function.workers * function.db_pool_size
  ]) + var.database_connection_headroom
}

resource "google_sql_database_instance" "main" {
  name                = "${var.name_prefix}-${random_id.database_suffix.hex}"
  region              = var.region
  database_version    = "POSTGRES_16"
  deletion_protection = var.deletion_protection

  #checkov:skip=CKV_GCP_79:PostgreSQL 16 is the version this application is built and tested on; move to a newer major version deliberately, with an in-place upgrade and a test run.
  #checkov:skip=CKV_GCP_110:pgAudit is not enabled: statement-level audit logs are costly at chat volume; log_statement=ddl already records every schema change. Enable cloudsql.enable_pgaudit when compliance requires it.
  #checkov:skip=CKV_GCP_108:log_hostname stays off: it costs a reverse DNS lookup on every connection, and every client is our own private subnet, whose addresses log_connections already records.
  #checkov:skip=CKV2_GCP_13:log_duration=on would log a line for every statement the chat traffic runs; Query Insights (below) records statement latency instead.

  settings {
    tier                        = var.database_tier
    edition                     = var.database_edition
    availability_type           = var.database_availability_type
    disk_type                   = "PD_SSD"
    disk_size                   = var.database_disk_size_gb
    disk_autoresize             = true
    deletion_protection_enabled = var.deletion_protection
    user_labels                 = local.labels

    ip_configuration {
      ipv4_enabled                                  = var.database_public_ip
      private_network                               = google_compute_network.main.id
      enable_private_path_for_google_cloud_services = false
      # Only clients presenting a Cloud SQL-issued certificate, i.e. the Cloud SQL connector and Auth
      # Proxy, which get one only with roles/cloudsql.client: no direct password connections at all.
      ssl_mode = "TRUSTED_CLIENT_CERTIFICATE_REQUIRED"
      # No authorized_networks: even with a public IP, no address range may connect directly.
    }

    backup_configuration {
      enabled                        = true
      point_in_time_recovery_enabled = true
      start_time                     = "03:00" # UTC
      transaction_log_retention_days = var.database_log_retention_days

      backup_retention_settings {
        retained_backups = var.database_backup_retention_count
        retention_unit   = "COUNT"
      }
    }

    maintenance_window {
      day          = 7 # Sunday
      hour         = 4 # UTC
      update_track = "stable"
    }

    insights_config {
      query_insights_enabled  = true
      record_application_tags = false
      record_client_address   = false
    }

    # IAM database authentication: the functions log in as their service accounts, with no password.
    database_flags {
      name  = "cloudsql.iam_authentication"
      value = "on"
    }

    # A ceiling the functions' pools must fit under (locals above), not the tier's default. Changing
    # it restarts the instance; resizing the functions does not touch it.
    database_flags {
      name  = "max_connections"
      value = tostring(var.database_max_connections)
    }

    # Logging: connections, lock waits, temp files, errors with their statement, schema changes. No
    # log_hostname: it would cost a reverse DNS lookup on every connection, for addresses that are
    # our own private subnet.
    database_flags {
      name  = "log_checkpoints"
      value = "on"
    }
    database_flags {
      name  = "log_connections"
      value = "on"
    }
    database_flags {
      name  = "log_disconnections"
      value = "on"
    }
    database_flags {
      name  = "log_lock_waits"
      value = "on"
    }
    database_flags {
      name  = "log_min_messages"
      value = "warning"
    }
    database_flags {
      name  = "log_min_error_statement"
      value = "error"
    }
    database_flags {
      name  = "log_min_duration_statement"
      value = "-1"
    }
    database_flags {
      name  = "log_statement"
      value = "ddl"
    }
    database_flags {
      name  = "log_temp_files"
      value = "0"
    }
    database_flags {
      name  = "log_executor_stats"
      value = "off"
    }
    database_flags {
      name  = "log_parser_stats"
      value = "off"
    }
    database_flags {
      name  = "log_planner_stats"
      value = "off"
    }
    database_flags {
      name  = "log_statement_stats"
      value = "off"
    }
  }

  lifecycle {
    precondition {
      condition     = local.database_connections_needed <= var.database_max_connections
      error_message = "The functions' pools may open ${local.database_connections_needed} connections (sum of max_instances x workers x db_pool_size, plus database_connection_headroom), more than database_max_connections (${var.database_max_connections}). Lower max_instances, workers or db_pool_size, or raise database_max_connections (which restarts Cloud SQL once; README.md: Operations)."
    }
  }

  depends_on = [google_service_networking_connection.private_service_access]
}

resource "google_sql_database" "raven" {
  name     = "raven"
  instance = google_sql_database_instance.main.name
  # Dropping the database with the instance still there would lose every chat: leave it on destroy.
  deletion_policy = "ABANDON"
}

# One IAM database user per function service account (DB_IAM_USER). ABANDON: Cloud SQL cannot drop a
# user that has been granted roles, and the instance's deletion drops them anyway.
resource "google_sql_user" "function" {
  for_each = local.functions

  instance        = google_sql_database_instance.main.name
  name            = trimsuffix(google_service_account.function[each.key].email, ".gserviceaccount.com")
  type            = "CLOUD_IAM_SERVICE_ACCOUNT"
  deletion_policy = "ABANDON"
}

# The migrations job's database user, which owns the schema (README.md: Migrations).
#
# Why a built-in user with a password, not an IAM user: Cloud SQL creates IAM users with no privileges,
# and only a member of cloudsqlsuperuser, which built-in users created through the API are, can grant
# them any. With no public IP there is nowhere an operator could run that first grant by hand, so the
# migrations job is that member. The password is an ephemeral random value (secrets.tf) written with
# the write-only password_wo, so it is in Secret Manager (readable only by the migrations service
# account) and nowhere in Terraform's state; no person ever needs it. Bumping
# var.migrator_password_version writes a new one here and in the secret, in the same apply.
resource "google_sql_user" "migrator" {
  instance            = google_sql_database_instance.main.name
  name                = "${replace(var.name_prefix, "-", "_")}_migrator"
  password_wo         = ephemeral.random_password.migrator.result
  password_wo_version = var.migrator_password_version
  deletion_policy     = "ABANDON"
}
