#!/usr/bin/env bash
# Apply the database migrations to the deployed Cloud SQL instance (make migrate-cloud):
#   1. build the migrations image from this working tree with Cloud Build, as the build account;
#   2. point the migrations Cloud Run job at it;
#   3. run the job and wait: alembic upgrade head, then the functions' database grants.
# Needs gcloud logged in as an operator of the project, and a `terraform apply` done (it reads the
# names from terraform output). Safe to run again: every step is idempotent.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

output() { terraform -chdir=terraform output -raw "$1"; }

project="$(output project_id)"
region="$(output region)"
job="$(output migrations_job)"
repository="$(output images_repository)"
build_account="$(output build_service_account)"
staging="$(output cloudbuild_staging_dir)"

revision="$(git rev-parse --short HEAD 2>/dev/null || echo local)"
image="${repository}/migrate:$(date -u +%Y%m%d-%H%M%S)-${revision}"

echo "==> building ${image}"
gcloud builds submit . \
  --project="$project" \
  --region="$region" \
  --config=terraform/migrations/cloudbuild.yaml \
  --substitutions="_IMAGE=${image}" \
  --service-account="$build_account" \
  --gcs-source-staging-dir="$staging"

echo "==> pointing job ${job} at it"
gcloud run jobs update "$job" --project="$project" --region="$region" --image="$image"

echo "==> running ${job}"
gcloud run jobs execute "$job" --project="$project" --region="$region" --wait
echo "==> migrations applied"
