"""chats_crud: list, create, read, rename and delete chats (the contract's "Chats" section).

| call                          | handler        |
|-------------------------------|----------------|
| GET    /api/chats             | list_chats     | (``?q=`` searches)
| GET    /api/usage             | read_usage     |
| POST   /api/chats/create      | create_chat    |
| GET    /api/chats/{chat_id}   | read_chat      |
| PATCH  /api/chats/{chat_id}   | rename_chat    |
| DELETE /api/chats/{chat_id}   | delete_chat    |

Both lists page with a cursor: a response that has more carries ``X-Next-Cursor`` and a
``Link: <...>; rel="next"`` header; pass the value back as ``cursor`` (chats) or ``before``
(messages). Without paging parameters the calls answer as the frontend expects.

Media in a page of messages gets short-lived signed GET URLs (``MEDIA_URL_TTL_SECONDS``),
all signed before the page is rendered. Deleting a chat queues the objects only it used, and
the bucket work starts in the background once the deletion is committed.
"""

from __future__ import annotations

from urllib.parse import urlencode

import functions_framework
from flask import Request, Response

from shared import chat_list, chats, history, media, usage
from shared.auth import AuthenticatedUser, check_user, request_authenticator, user_row_missing
from shared.errors import ApiError, Unauthorized
from shared.runtime import database, make_api, start_function
from shared.schemas import (
    LIST_PAGE_SIZE,
    SEARCH_PAGE_SIZE,
    Chat,
    ChatListQuery,
    CreateChatRequest,
    CreatedChat,
    DeletedChat,
    Message,
    MessageListQuery,
    MessagePage,
    RenameChatRequest,
    SearchPage,
)
from shared.settings import get_settings
from shared.storage import media_storage, schedule_storage_cleanup
from shared.web import checks_user_itself, json_response, parse_json, query_args, validate

start_function("GCS_BUCKET_NAME")


def _next_page_headers(request: Request, cursor_name: str, cursor: object | None) -> dict[str, str]:
    if cursor is None:
        return {}
    query = {**request.args.to_dict(), cursor_name: str(cursor)}
    return {
        "X-Next-Cursor": str(cursor),
        "Link": f'<{request.path}?{urlencode(query)}>; rel="next"',
    }


# The plain list without a query string (the sidebar's every load): no validation to run.
_NO_LIST_QUERY = ChatListQuery.model_validate({})


@checks_user_itself  # the page's statement reads the user's row: one round trip, not two
def list_chats(request: Request, user: AuthenticatedUser) -> Response:
    try:
        query = (
            validate(ChatListQuery, query_args(request, ChatListQuery), where="query.")
            if request.query_string
            else _NO_LIST_QUERY
        )
        if query.q:
            check_user(user)  # the search's statements do not read the user's row
            hits, next_cursor = chat_list.search_chats(
                database(), user.id, query.q, query.limit or SEARCH_PAGE_SIZE, query.cursor
            )
            return json_response(
                SearchPage(hits), headers=_next_page_headers(request, "cursor", next_cursor)
            )
        limit = query.limit or LIST_PAGE_SIZE
        page = chat_list.list_chats_json(database(), user.id, limit, query.cursor)
    except ApiError as error:
        if error.status < 500 and not isinstance(error, Unauthorized):
            check_user(user)  # a deleted user hears 401 user_deleted first, as on every route
        raise
    if not page.user_known:
        user_row_missing(user)  # 401 user_deleted, or the row is created again
        page = chat_list.list_chats_json(database(), user.id, limit, query.cursor)
    return Response(
        page.body,
        mimetype="application/json",
        headers=_next_page_headers(request, "cursor", page.next_cursor),
    )


def create_chat(request: Request, user: AuthenticatedUser) -> Response:
    body = parse_json(request, CreateChatRequest)
    with database().transaction() as tx:
        row = chats.create_chat(tx, user.id, body.title)
    return json_response(CreatedChat.from_row(row))


def read_chat(request: Request, user: AuthenticatedUser, chat_id: str) -> Response:
    query = validate(MessageListQuery, query_args(request, MessageListQuery), where="query.")
    rows, older = history.list_messages(
        database(), user.id, chats.parse_chat_id(chat_id), query.limit, query.before
    )
    sign = media.media_url_signer(media_storage(), rows)
    messages = MessagePage([Message.from_row(row, sign) for row in rows])
    return json_response(messages, headers=_next_page_headers(request, "before", older))


def rename_chat(request: Request, user: AuthenticatedUser, chat_id: str) -> Response:
    body = parse_json(request, RenameChatRequest)
    row = chats.rename_chat(database(), user.id, chats.parse_chat_id(chat_id), body.title)
    return json_response(Chat.from_row(row))


def delete_chat(request: Request, user: AuthenticatedUser, chat_id: str) -> Response:
    chats.delete_chat(database(), user.id, chats.parse_chat_id(chat_id))
    schedule_storage_cleanup()  # off the request path; the queue row survives any failure
    return json_response(DeletedChat(message="Chat deleted"))


def read_usage(request: Request, user: AuthenticatedUser) -> Response:
    plan = usage.plan_for(get_settings(), user.plan)
    return json_response(usage.usage_report(database(), user.id, plan))


API = make_api(
    "chats_crud",
    {
        "listChats": list_chats,
        "createChat": create_chat,
        "listMessages": read_chat,
        "renameChat": rename_chat,
        "deleteChat": delete_chat,
        "readUsage": read_usage,
    },
    authenticate=request_authenticator(),
)


@functions_framework.http
def chats_crud(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to a handler above."""
    return API.handle(request)
