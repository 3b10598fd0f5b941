# Database migrations: a Cloud Run job that runs `alembic upgrade head` inside the VPC, never at
# function start. terraform/migrations/migrate.sh (make migrate-cloud) builds the image from the
# repository with Cloud Build, points the job at it and runs it to completion; README.md: Migrations.
#
# The job (terraform/migrations/run_migrations.py) starts the Cloud SQL Auth Proxy on the private IP,
# runs alembic with DATABASE_URL pointing at the proxy as the migrator user (database.tf), which owns
# the schema, then grants the functions' IAM database users the `raven_app` role: read and write on
# every table and sequence in schema public, now and for tables later migrations create. IAM users have
# no privileges until then, which is why the migration runner, not Terraform, makes this grant.

resource "google_artifact_registry_repository" "images" {
  repository_id = var.name_prefix
  location      = var.region
  format        = "DOCKER"
  description   = "Raven's migrations image."

  #checkov:skip=CKV_GCP_84:Google-managed encryption: the image holds only the repository's public code and pinned packages, no data; a customer-managed key would add a KMS key to run and rotate for nothing.

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "7776000s" # 90 days, beyond the 10 most recent
    }
  }

  depends_on = [time_sleep.apis_ready]
}

locals {
  # Until migrate.sh first builds the real image the job holds Google's sample job image; Terraform
  # then leaves the image to migrate.sh (ignore_changes below).
  migrations_placeholder_image = "us-docker.pkg.dev/cloudrun/container/job:latest"
}

resource "google_cloud_run_v2_job" "migrate" {
  name                = "${var.name_prefix}-migrate"
  location            = var.region
  deletion_protection = false

  template {
    task_count  = 1
    parallelism = 1

    template {
      service_account = google_service_account.migrate.email
      max_retries     = 0 # a failed migration needs a person, not a retry
      timeout         = "1800s"

      # Same subnet as the functions: the private IP is reachable, the rest goes out directly.
      vpc_access {
        network_interfaces {
          # Names, like the functions' Direct VPC fields (the provider's examples use names).
          network    = google_compute_network.main.name
          subnetwork = google_compute_subnetwork.serverless.name
        }
        egress = "PRIVATE_RANGES_ONLY"
      }

      containers {
        image = local.migrations_placeholder_image

        env {
          name  = "CLOUD_SQL_INSTANCE"
          value = google_sql_database_instance.main.connection_name
        }
        env {
          name  = "DB_NAME"
          value = google_sql_database.raven.name
        }
        env {
          name  = "DB_IP_TYPE"
          value = "PRIVATE"
        }
        env {
          name  = "MIGRATOR_USER"
          value = google_sql_user.migrator.name
        }
        env {
          name = "MIGRATOR_PASSWORD"
          value_source {
            secret_key_ref {
              secret  = google_secret_manager_secret.migrator_password.secret_id
              version = google_secret_manager_secret_version.migrator_password.version
            }
          }
        }
        # The IAM database users granted raven_app after every upgrade.
        env {
          name  = "APP_DB_USERS"
          value = join(",", [for user in google_sql_user.function : user.name])
        }

        resources {
          limits = {
            cpu    = "1"
            memory = "1Gi"
          }
        }
      }
    }
  }

  lifecycle {
    ignore_changes = [
      template[0].template[0].containers[0].image, # set by migrate.sh
      client,
      client_version,
    ]
  }

  depends_on = [
    google_project_iam_member.grant,
    google_secret_manager_secret_iam_member.migrate_reads_password,
  ]
}
