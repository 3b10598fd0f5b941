# Terraform and provider versions.
#
# Terraform >= 1.11: write-only arguments (secret_data_wo, password_wo), which keep every secret out of
# the plan and the state; ephemeral input variables and ephemeral resources need 1.10.
# google >= 7.21: Cloud Run functions' Direct VPC egress (service_config.direct_vpc_network_interface
# and direct_vpc_egress), which the functions use to reach Cloud SQL's private IP; Google's page
# "Direct VPC egress" for Cloud Run functions says "You must use Terraform version 7.21.0 or later".
# random >= 3.7: the ephemeral random_password (the migrator's password, never stored).
# time: time_sleep, the wait after enabling the APIs (apis.tf).
# tests/test_terraform_schema.py checks every type, argument and block against these providers'
# schemas and that these lower bounds cover the few paths newer than the extracted schema.
terraform {
  required_version = ">= 1.11"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 7.21, < 8.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 7.21, < 8.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.7, < 4.0"
    }
    time = {
      source  = "hashicorp/time"
      version = ">= 0.13, < 1.0"
    }
  }
}

provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

# Only for google_project_service_identity (the Vertex AI service agent's email), which the GA
# provider does not have.
provider "google-beta" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}
