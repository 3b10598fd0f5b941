# Terraform and provider versions.
#
# google >= 7.31: Cloud Run functions' Direct VPC egress (service_config.direct_vpc_network_interface),
# which the functions use to reach Cloud SQL's private IP, is GA in the google provider from 7.x.
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 7.31, < 8.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = ">= 7.31, < 8.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
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
