"""Where each user's objects live in the uploads bucket: folders and safe object names.

Pure string rules, used wherever a user's objects are named: upload_url names an upload
(:func:`object_name`), media promotes it once checked (:func:`permanent_object_name`),
deleting a user queues both folders (:func:`user_prefixes`), and the deleted-user check
looks for that queued folder (:func:`user_prefix`).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import uuid

UPLOADS_ROOT = "uploads/"
INCOMING_ROOT = "incoming/"
# A Clerk user id (``user_2abc...``) is used as it is; anything else becomes a hash, so that
# one user's folder can never be a prefix of another's (a "/" in a sub would allow that).
PLAIN_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# File names are cut to this many UTF-8 bytes: well under GCS's 1024-byte object names with
# the folder in front, and under the 255 bytes a file system allows a name (the emulator, and
# anyone who copies the bucket to disk, store objects as files).
MAX_FILE_NAME_BYTES = 200
MAX_EXTENSION_BYTES = 16
FALLBACK_FILE_NAME = "file"
# Punctuation that means something to shells, URLs or gsutil wildcards: replaced, not kept.
UNSAFE_NAME_CHARACTERS = set('/\\#?[]*"<>|:')


def _user_folder(user_id: str) -> str:
    if PLAIN_USER_ID.fullmatch(user_id):
        return f"{user_id}/"
    digest = hashlib.sha256(user_id.encode()).hexdigest()
    return f"~{digest}/"  # "~" never occurs in a plain id: no collisions


def user_prefix(user_id: str) -> str:
    """The folder of a user's checked uploads, ``uploads/<user>/``."""
    return UPLOADS_ROOT + _user_folder(user_id)


def incoming_prefix(user_id: str) -> str:
    """The folder a user's files are PUT to, ``incoming/<user>/``, until they are checked."""
    return INCOMING_ROOT + _user_folder(user_id)


def user_prefixes(user_id: str) -> tuple[str, str]:
    """Both folders of a user's objects; deleting the user deletes both."""
    return incoming_prefix(user_id), user_prefix(user_id)


def _truncate_utf8(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore")  # drops a character cut in half


def safe_file_name(filename: str) -> str:
    """A file name that is safe as the last segment of an object name, and still readable.

    Only the last path segment is kept (``../../etc/passwd`` is ``passwd``,
    ``C:\\fakepath\\a.png`` is ``a.png``); the text is NFC-normalised so one name has one
    spelling; control, format (bidi overrides, zero-width) and unassigned characters go;
    shell and URL punctuation becomes ``_``; letters of every script, marks, digits and
    symbols stay. Leading and trailing dots and spaces are stripped (no ``.`` or ``..``),
    and the result is at most :data:`MAX_FILE_NAME_BYTES` UTF-8 bytes, keeping a short
    extension. A name with nothing left becomes ``file``.
    """
    name = unicodedata.normalize("NFC", filename)
    name = re.split(r"[/\\]", name)[-1]
    kept = []
    for character in name:
        category = unicodedata.category(character)
        if category in {"Zl", "Zp"} or (category.startswith("Z") and character != " "):
            kept.append(" ")  # every other kind of space or line break is a plain space
        elif category in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            continue
        elif character in UNSAFE_NAME_CHARACTERS:
            kept.append("_")
        else:
            kept.append(character)
    # Dropping a character may bring a base letter and a mark together: normalise again.
    name = unicodedata.normalize("NFC", re.sub(r" {2,}", " ", "".join(kept))).strip(" .")
    if len(name.encode()) > MAX_FILE_NAME_BYTES:
        stem, dot, extension = name.rpartition(".")
        if stem and 0 < len(extension.encode()) <= MAX_EXTENSION_BYTES:
            budget = MAX_FILE_NAME_BYTES - len(extension.encode()) - 1
            name = _truncate_utf8(stem, budget).rstrip(" .") + dot + extension
        else:
            name = _truncate_utf8(name, MAX_FILE_NAME_BYTES).rstrip(" .")
    return name or FALLBACK_FILE_NAME


def object_name(user_id: str, upload_id: uuid.UUID | str, filename: str) -> str:
    """``incoming/<user>/<upload id>/<safe file name>``: where the browser PUTs one upload."""
    return f"{incoming_prefix(user_id)}{upload_id}/{safe_file_name(filename)}"


def permanent_object_name(incoming_name: str) -> str:
    """Where an upload lives once checked: the same name under ``uploads/``.

    A name already outside ``incoming/`` (an upload recorded before uploads were checked)
    stays where it is.
    """
    if incoming_name.startswith(INCOMING_ROOT):
        return UPLOADS_ROOT + incoming_name[len(INCOMING_ROOT) :]
    return incoming_name
