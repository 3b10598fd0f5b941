#!/usr/bin/env bash
# Apply the database migrations to the deployed Cloud SQL instance (make migrate-cloud):
#   1. build the migrations image with Cloud Build, as the build account, from a minimal build context
#      of allow-listed files copied out of this working tree (never the whole checkout: no
#      terraform.tfvars, .data/, virtualenvs or stray files are uploaded or baked in);
#   2. point the migrations Cloud Run job at it;
#   3. run the job and wait: alembic upgrade head, then the functions' database grants.
# Needs gcloud logged in as an operator of the project, and a `terraform apply` done (it reads the
# names from terraform output). Safe to run again: every step is idempotent.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

# The build context: exactly these files (tests/test_terraform.py checks the list).
#   migrate.sh --context-only DIR   assembles it in DIR and stops (no gcloud, no terraform).
build_context() {
  local context="$1"
  mkdir -p "$context/app/terraform/migrations"
  cp terraform/migrations/Dockerfile terraform/migrations/cloudbuild.yaml "$context/"
  cp terraform/migrations/requirements.txt "$context/requirements.txt"
  cp alembic.ini "$context/app/"
  cp terraform/migrations/run_migrations.py "$context/app/terraform/migrations/"
  local file
  while IFS= read -r -d '' file; do
    mkdir -p "$context/app/$(dirname "$file")"
    cp "$file" "$context/app/$file"
  done < <(find migrations shared -type f \( -name '*.py' -o -name '*.mako' -o -name 'system_instruction.md' \) \
    -not -path '*/__pycache__/*' -print0)
}

if [[ "${1:-}" == "--context-only" ]]; then
  build_context "${2:?usage: migrate.sh --context-only DIR}"
  exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
build_context "$context"

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
gcloud builds submit "$context" \
  --project="$project" \
  --region="$region" \
  --config="$context/cloudbuild.yaml" \
  --substitutions="_IMAGE=${image}" \
  --service-account="$build_account" \
  --gcs-source-staging-dir="$staging"

echo "==> pointing job ${job} at it"
gcloud run jobs update "$job" --project="$project" --region="$region" --image="$image"

echo "==> running ${job}"
gcloud run jobs execute "$job" --project="$project" --region="$region" --wait
echo "==> migrations applied"
