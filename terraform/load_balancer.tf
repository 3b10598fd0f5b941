# Optional (var.enable_load_balancer): every path of the API under one domain, through a global
# external Application Load Balancer with a Google-managed certificate. Each public function is a
# serverless NEG backend; paths reach the function unchanged (no rewrite), so each function serves
# its contract paths whether called here or at its own URL. HTTP redirects to HTTPS.
#
# The functions' own URLs keep working (ingress stays ALLOW_ALL): the frontend may use either.

locals {
  # Function -> its paths, generated from the route table (shared/routes.py) by
  # `make routes`; tests/test_routes.py fails when the file is not current. summarize and
  # storage_sweep are private and never behind the load balancer.
  load_balancer_routes = jsondecode(file("${path.module}/load_balancer_routes.json"))
  # A path ending in "/*" is everything under it; another "*" is one path segment.
  load_balancer_paths = flatten([
    for function, paths in local.load_balancer_routes : [
      for path in paths : { function = function, path = path }
    ]
  ])
  # Route rules are tried in priority order: most specific first, so path templates
  # (/api/chats/*/messages/*/stream) come before exact paths, and those before prefixes.
  load_balancer_route_rules = concat(
    [for route in local.load_balancer_paths : route if strcontains(trimsuffix(route.path, "/*"), "*")],
    [for route in local.load_balancer_paths : route if !strcontains(route.path, "*")],
    [for route in local.load_balancer_paths : route if endswith(route.path, "/*") && !strcontains(trimsuffix(route.path, "/*"), "*")],
  )

  load_balanced_functions = var.enable_load_balancer ? local.load_balancer_routes : {}
  load_balancer_count     = var.enable_load_balancer ? 1 : 0
}

resource "google_compute_global_address" "load_balancer" {
  count = local.load_balancer_count

  name = "${var.name_prefix}-api"

  depends_on = [time_sleep.apis_ready]

  lifecycle {
    precondition {
      condition     = var.domain != null
      error_message = "enable_load_balancer needs domain, e.g. api.raven.example.com."
    }
  }
}

resource "google_compute_managed_ssl_certificate" "load_balancer" {
  count = local.load_balancer_count

  # Named after the domain: a new domain makes a new certificate, created before the old one is
  # deleted (create_before_destroy), which a fixed name would make impossible.
  name = "${var.name_prefix}-api-cert-${substr(sha256(coalesce(var.domain, "none")), 0, 8)}"

  managed {
    domains = [var.domain]
  }

  lifecycle {
    create_before_destroy = true
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_compute_region_network_endpoint_group" "function" {
  for_each = local.load_balanced_functions

  name                  = "${local.resource_names[each.key]}-neg"
  region                = var.region
  network_endpoint_type = "SERVERLESS"

  # Cloud Run functions (gen2) are Cloud Run services of the same name.
  cloud_run {
    service = google_cloudfunctions2_function.function[each.key].name
  }
}

resource "google_compute_backend_service" "function" {
  for_each = local.load_balanced_functions

  name                  = "${local.resource_names[each.key]}-backend"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  protocol              = "HTTPS"

  backend {
    group = google_compute_region_network_endpoint_group.function[each.key].id
  }

  log_config {
    enable      = true
    sample_rate = 1.0
  }
}

resource "google_compute_url_map" "https" {
  count = local.load_balancer_count

  name = "${var.name_prefix}-api"
  # Paths outside the contract go to chats_crud, which answers 404 for them.
  default_service = google_compute_backend_service.function["chats_crud"].id

  host_rule {
    hosts        = [var.domain]
    path_matcher = "api"
  }

  path_matcher {
    name            = "api"
    default_service = google_compute_backend_service.function["chats_crud"].id

    # Route rules, not path rules: a path rule's "*" may only end a path.
    dynamic "route_rules" {
      for_each = { for index, route in local.load_balancer_route_rules : index => route }
      content {
        priority = route_rules.key + 1
        service  = google_compute_backend_service.function[route_rules.value.function].id
        match_rules {
          prefix_match        = endswith(route_rules.value.path, "/*") && !strcontains(trimsuffix(route_rules.value.path, "/*"), "*") ? trimsuffix(route_rules.value.path, "*") : null
          path_template_match = strcontains(trimsuffix(route_rules.value.path, "/*"), "*") ? route_rules.value.path : null
          full_path_match     = strcontains(route_rules.value.path, "*") ? null : route_rules.value.path
        }
      }
    }
  }
}

resource "google_compute_ssl_policy" "load_balancer" {
  count = local.load_balancer_count

  name            = "${var.name_prefix}-api-tls"
  profile         = "MODERN"
  min_tls_version = "TLS_1_2"

  depends_on = [time_sleep.apis_ready]
}

resource "google_compute_target_https_proxy" "load_balancer" {
  count = local.load_balancer_count

  name             = "${var.name_prefix}-api"
  url_map          = google_compute_url_map.https[0].id
  ssl_certificates = [google_compute_managed_ssl_certificate.load_balancer[0].id]
  ssl_policy       = google_compute_ssl_policy.load_balancer[0].id
}

resource "google_compute_global_forwarding_rule" "https" {
  count = local.load_balancer_count

  name                  = "${var.name_prefix}-api-https"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.load_balancer[0].id
  port_range            = "443"
  target                = google_compute_target_https_proxy.load_balancer[0].id
}

# Plain HTTP only redirects to HTTPS.
resource "google_compute_url_map" "http_redirect" {
  count = local.load_balancer_count

  name = "${var.name_prefix}-api-http-redirect"

  default_url_redirect {
    https_redirect         = true
    redirect_response_code = "MOVED_PERMANENTLY_DEFAULT"
    strip_query            = false
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_compute_target_http_proxy" "http_redirect" {
  count = local.load_balancer_count

  name    = "${var.name_prefix}-api-http-redirect"
  url_map = google_compute_url_map.http_redirect[0].id
}

resource "google_compute_global_forwarding_rule" "http_redirect" {
  count = local.load_balancer_count

  name                  = "${var.name_prefix}-api-http"
  load_balancing_scheme = "EXTERNAL_MANAGED"
  ip_address            = google_compute_global_address.load_balancer[0].id
  port_range            = "80"
  target                = google_compute_target_http_proxy.http_redirect[0].id
}
