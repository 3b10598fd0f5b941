# Function source archives: which files each one holds, and its content hash. Only locals, and no
# provider: tests/test_terraform.py evaluates this file with `terraform console` and compares the
# hashes with dev/bundle.py's.
#
# A function's archive is built by `make archives` (tools/build_function_archives.py, dev/bundle.py)
# before any plan or apply, not by Terraform: the files of an allow-list only (the function's *.py
# and requirements.txt at the archive's root, shared/**/*.py and shared/system_instruction.md beside
# main.py), zipped deterministically (sorted entries, fixed timestamps and permissions, stored
# uncompressed), so the same commit yields the same bytes on any machine.
#
# Terraform computes the same content hash from the same files (local.source_hash: sha256 over
# "<path in archive> <sha256 of the file>" lines, sorted by path) and names the uploaded object by it,
# so a plan made on one machine names exactly the object that an apply on another uploads, and the
# precondition refuses to upload an archive that was built from other sources (a stale .build/).
# Only hashes and paths reach the state, never a file's text.

locals {
  archive_function_patterns = ["*.py", "requirements.txt"]
  archive_shared_patterns   = ["**/*.py", "system_instruction.md"]

  # Per function: path inside the archive -> file in the repository.
  archive_files = {
    for function in keys(local.function_defaults) : function => merge(
      merge([
        for pattern in local.archive_function_patterns : {
          for relative in fileset("${path.module}/../functions/${function}", pattern) :
          relative => "${path.module}/../functions/${function}/${relative}"
        }
      ]...),
      merge([
        for pattern in local.archive_shared_patterns : {
          for relative in fileset("${path.module}/../shared", pattern) :
          "shared/${relative}" => "${path.module}/../shared/${relative}"
        }
      ]...),
    )
  }

  source_hash = {
    for function, files in local.archive_files : function => sha256(join("", [
      for archive_path in sort(keys(files)) : "${archive_path} ${filesha256(files[archive_path])}\n"
    ]))
  }
}
