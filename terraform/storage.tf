# Buckets: user uploads, function sources, and the configuration bucket holding the system
# instruction. All private (uniform bucket-level access, public access prevention enforced): the
# browser reaches uploads only through V4 signed URLs the functions make.

# --- uploads ---------------------------------------------------------------------------------
#
# The browser PUTs a file straight to incoming/<user>/<upload>/<name> with a signed URL from upload_url
# (bound to the object and its Content-Type only, so the plainest browser PUT works), then names it in
# a chat message. At that first use chat_stream checks the object (size limit, declared type, magic
# numbers) and either copies it to uploads/<user>/<upload>/<name> with a server-side rewrite and
# deletes the incoming object, or deletes it and refuses the message. chats_crud hands out signed GET
# URLs for the objects under uploads/.
#
# Cleaning up files no message ever used (README.md: Uploads) needs nothing from the client: whatever
# is still under incoming/ a day after it was written was never used, and the rule below deletes it.
# Objects under uploads/ are only ever removed by the functions (a deleted chat or user).
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
  # request headers are the ones a signed PUT may carry: Content-Type (all the plain PUT sends), the
  # size binding a client may opt in to (bindSize), and Range for media players.
  cors {
    origin          = var.allowed_origins
    method          = ["PUT", "GET", "HEAD"]
    response_header = ["Content-Type", "x-goog-content-length-range", "Range"]
    max_age_seconds = 3600
  }

  # Files uploaded but never used in a message (unchecked, under incoming/): deleted after a day.
  lifecycle_rule {
    condition {
      matches_prefix = ["incoming/"]
      age            = var.unreferenced_upload_days
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
# editing shared/system_instruction.md and applying changes Raven's instruction without redeploying
# anything. The same file is bundled with every function as the default used when the bucket cannot
# be read, so there is one text, not two that drift apart.
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
  source       = "${path.module}/../shared/system_instruction.md"
  content_type = "text/markdown; charset=utf-8"
}
