# The private network: the functions and the migrations job send their private-range traffic into
# this VPC (Direct VPC egress), where Cloud SQL's private IP lives in a peered Google-managed range.
# Everything else they call (Google APIs, Gemini, Clerk) goes out directly, not through the VPC.

resource "google_compute_network" "main" {
  name                    = "${var.name_prefix}-vpc"
  auto_create_subnetworks = false
  routing_mode            = "REGIONAL"

  depends_on = [time_sleep.apis_ready]
}

resource "google_compute_subnetwork" "serverless" {
  name                     = "${var.name_prefix}-serverless"
  region                   = var.region
  network                  = google_compute_network.main.id
  ip_cidr_range            = var.subnet_cidr
  private_ip_google_access = true

  #checkov:skip=CKV_GCP_76:The subnet is IPv4-only; there is no IPv6 range to enable Private Google Access for.

  # Sampled flow logs, to see who talks to the database if ever needed; 10% keeps them cheap.
  log_config {
    aggregation_interval = "INTERVAL_10_MIN"
    flow_sampling        = 0.1
    metadata             = "INCLUDE_ALL_METADATA"
  }
}

# Nothing inside this VPC accepts connections from anywhere: the serverless instances only connect
# out. An explicit, logged deny instead of relying on the implied rule.
resource "google_compute_firewall" "deny_all_ingress" {
  name      = "${var.name_prefix}-deny-all-ingress"
  network   = google_compute_network.main.id
  direction = "INGRESS"
  priority  = 65534

  deny {
    protocol = "all"
  }

  source_ranges = ["0.0.0.0/0"]

  log_config {
    metadata = "INCLUDE_ALL_METADATA"
  }
}

# Private services access: a range of this VPC reserved for Google-managed services, peered with
# Google's network, where Cloud SQL puts the instance's private IP.
resource "google_compute_global_address" "private_service_access" {
  name          = "${var.name_prefix}-private-service-access"
  purpose       = "VPC_PEERING"
  address_type  = "INTERNAL"
  prefix_length = var.private_service_access_prefix_length
  network       = google_compute_network.main.id
}

resource "google_service_networking_connection" "private_service_access" {
  network                 = google_compute_network.main.id
  service                 = "servicenetworking.googleapis.com"
  reserved_peering_ranges = [google_compute_global_address.private_service_access.name]
  # Removing the peering fails while Cloud SQL's producer network still holds it, which it does for
  # a while after the instance is deleted: destroy leaves the peering rather than failing.
  deletion_policy = "ABANDON"

  depends_on = [time_sleep.apis_ready]
}
