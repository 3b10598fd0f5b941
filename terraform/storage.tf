# Buckets: user uploads, function sources, and the configuration bucket holding the system
# instruction. All private (uniform bucket-level access, public access prevention enforced): the
# browser reaches uploads only through V4 signed URLs the functions make.

# --- uploads ---------------------------------------------------------------------------------
#
# The browser PUTs a file straight to uploads/... with a signed URL from upload_url, then sends the
# object's name with a chat message; chats_crud hands out signed GET URLs for stored media.
#
# Cleaning up uploads no message ever referenced (README.md: Uploads). A lifecycle rule cannot test
# "custom time is not set" (conditions on custom time only match objects that have one), so the state
# lives in the custom time itself, which can only ever move forward:
#   - upload_url signs the PUT with the header x-goog-custom-time: 1970-01-01T00:00:00Z, so every new
#     upload starts "unreferenced" (custom time before 1970-01-02);
#   - when a message references the object, the function storing the message sets its custom time to
#     now, which marks it referenced for good;
#   - the rule below deletes objects under uploads/ that are older than var.unreferenced_upload_days
#     and still carry the 1970 custom time.
# Objects with no custom time at all are never touched by the rule: a missing marker keeps data.
resource "google_storage_bucket" "uploads" {
  name                        = "${var.project_id}-${var.name_prefix}-uploads"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Holds users' media: terraform destroy must not silently delete it.
  force_destroy = false

  # No soft delete: a deleted user's or chat's media must really be gone, not recoverable for 7 days.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  #checkov:skip=CKV_GCP_62:Usage logs would need a second bucket; object reads and writes are audited through Cloud Audit Logs (Data Access for Cloud Storage) when enabled on the project.
  #checkov:skip=CKV_GCP_78:Not versioned on purpose: deleting a user (clerk_webhook) or a chat must really remove their media, not keep noncurrent copies (soft delete is off for the same reason).

  # Direct browser uploads (PUT) and media fetches (GET) from the frontend's origins. The allowed
  # request headers are the ones the signed PUT requires.
  cors {
    origin          = var.allowed_origins
    method          = ["PUT", "GET", "HEAD"]
    response_header = ["Content-Type", "x-goog-content-length-range", "x-goog-custom-time"]
    max_age_seconds = 3600
  }

  lifecycle_rule {
    condition {
      matches_prefix     = ["uploads/"]
      age                = var.unreferenced_upload_days
      custom_time_before = "1970-01-02"
    }
    action {
      type = "Delete"
    }
  }

  # Resumable or multipart uploads a browser abandoned halfway.
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [time_sleep.apis_ready]
}

# --- function sources ------------------------------------------------------------------------
#
# One zip per function and content hash (functions.tf), and the source tarballs Cloud Build stages for
# the migrations image (cloudbuild/, cleaned after a week).
resource "google_storage_bucket" "sources" {
  name                        = "${var.project_id}-${var.name_prefix}-sources"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  #checkov:skip=CKV_GCP_62:Only build inputs live here, written by Terraform and Cloud Build; no usage logs needed.
  #checkov:skip=CKV_GCP_78:Objects are named by their content hash, so a change is a new object and nothing is ever overwritten: versioning would add nothing.

  lifecycle_rule {
    condition {
      matches_prefix = ["cloudbuild/"]
      age            = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis_ready]
}

# --- configuration: the system instruction ---------------------------------------------------
#
# chat_stream reads it from SYSTEM_INSTRUCTION_URL and caches it for SYSTEM_INSTRUCTION_TTL_SECONDS:
# editing system_instruction.md and applying changes Raven's instruction without redeploying anything.
# Versioned, so an edit can be rolled back.
resource "google_storage_bucket" "config" {
  name                        = "${var.project_id}-${var.name_prefix}-config"
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  #checkov:skip=CKV_GCP_62:Holds one small object written by Terraform; changes are tracked in Git and by object versions.

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 10
      with_state         = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [time_sleep.apis_ready]
}

resource "google_storage_bucket_object" "system_instruction" {
  bucket       = google_storage_bucket.config.name
  name         = "system_instruction.md"
  source       = "${path.module}/system_instruction.md"
  content_type = "text/markdown; charset=utf-8"
}
