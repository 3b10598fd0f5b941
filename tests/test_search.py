"""GET /api/chats?q=: full-text search over the caller's chat titles and messages."""

from __future__ import annotations

import uuid

from shared.db import Database
from tests.conftest import ApiClient, assert_error
from tests.helpers import add_messages


def search(client: ApiClient, q: str, **params: object) -> list[dict]:
    response = client.get("/api/chats", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return list(response.json())


def test_search_finds_titles_and_messages_best_first_with_a_snippet(
    alice: ApiClient, db: Database
) -> None:
    word = "corvid" + uuid.uuid4().hex[:6]
    about = alice.create_chat(f"All about {word}")
    add_messages(db, about["chatId"], [f"Tell me about {word}", f"The {word} is a clever bird."])
    mention = alice.create_chat("Birds in general")
    ids = add_messages(
        db,
        mention["chatId"],
        [
            "What do you know about crows, magpies and jays in the city parks?",
            f"Many things: in passing, the {word} family is large, and crows, magpies and jays "
            "all belong to it; they cache food, recognise faces and use tools.",
        ],
    )
    alice.create_chat("Unrelated")

    hits = search(alice, word)
    assert [hit["chatId"] for hit in hits] == [about["chatId"], mention["chatId"]]
    assert {"chatId", "userId", "title", "createdAt", "updatedAt", "snippet"} <= set(hits[0])
    assert hits[1]["matchMessageId"] == ids[1]
    assert word in hits[1]["snippet"] and len(hits[1]["snippet"]) < 200
    assert "<b>" not in hits[1]["snippet"]  # plain text: nothing a client could render as HTML


def test_search_is_case_insensitive_and_language_agnostic(alice: ApiClient, db: Database) -> None:
    tag = uuid.uuid4().hex[:6]
    polish = alice.create_chat(f"Żółw {tag}")
    german = alice.create_chat(f"chat {tag}")
    add_messages(db, german["chatId"], [f"Wo ist die Straße{tag}?", "Links."])
    russian = alice.create_chat(f"другой {tag}")
    add_messages(db, russian["chatId"], [f"Расскажи про ворона{tag}", "Ворон умная птица."])

    assert [h["chatId"] for h in search(alice, f"żółw {tag}")] == [polish["chatId"]]
    assert [h["chatId"] for h in search(alice, f"STRASSE{tag} OR straße{tag}")] == [
        german["chatId"]
    ]
    assert [h["chatId"] for h in search(alice, f"ворона{tag}")] == [russian["chatId"]]


def test_search_sees_only_the_callers_chats(alice: ApiClient, bob: ApiClient, db: Database) -> None:
    word = "secret" + uuid.uuid4().hex[:6]
    bobs = bob.create_chat(f"Bob's {word}")
    add_messages(db, bobs["chatId"], [f"my {word} plan", "noted"])
    assert search(alice, word) == []
    assert [h["chatId"] for h in search(bob, word)] == [bobs["chatId"]]


def test_search_pages_like_the_list(alice: ApiClient, db: Database) -> None:
    word = "paged" + uuid.uuid4().hex[:6]
    created = {alice.create_chat(f"{word} {n}")["chatId"] for n in range(5)}
    seen: list[str] = []
    response = alice.get("/api/chats", params={"q": word, "limit": 2})
    while True:
        assert response.status_code == 200
        seen += [hit["chatId"] for hit in response.json()]
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            assert "Link" not in response.headers
            break
        assert 'rel="next"' in response.headers["Link"] and "q=" in response.headers["Link"]
        response = alice.get("/api/chats", params={"q": word, "limit": 2, "cursor": cursor})
    assert len(seen) == 5 and set(seen) == created


def test_blank_query_is_the_plain_list_and_a_phrase_with_no_words_matches_nothing(
    alice: ApiClient,
) -> None:
    chat = alice.create_chat("Anything")
    assert [c["chatId"] for c in alice.get("/api/chats", params={"q": "  "}).json()] == [
        chat["chatId"]
    ]
    assert search(alice, "!!! ???") == []


def test_bad_search_input_is_a_clear_4xx(alice: ApiClient) -> None:
    assert_error(alice.get("/api/chats", params={"q": "x" * 201}), 422)
    assert_error(
        alice.get("/api/chats", params={"q": "x", "cursor": "not-a-cursor"}), 400, "invalid_cursor"
    )
    # A list cursor is not a search cursor (nor the other way round).
    word = "mixed" + uuid.uuid4().hex[:6]
    for n in range(3):
        alice.create_chat(f"{word} {n}")
    list_cursor = alice.get("/api/chats", params={"limit": 1}).headers["X-Next-Cursor"]
    assert_error(
        alice.get("/api/chats", params={"q": word, "cursor": list_cursor}), 400, "invalid_cursor"
    )
    search_cursor = alice.get("/api/chats", params={"q": word, "limit": 1}).headers["X-Next-Cursor"]
    assert_error(alice.get("/api/chats", params={"cursor": search_cursor}), 400, "invalid_cursor")


def test_search_needs_a_token(anonymous: ApiClient) -> None:
    assert_error(anonymous.get("/api/chats", params={"q": "x"}), 401)


def test_a_word_too_common_to_rank_lists_matching_chats_by_recent_activity(
    alice: ApiClient, db: Database
) -> None:
    from shared.chat_list import SEARCH_RANKED_HITS

    word = "everywhere" + uuid.uuid4().hex[:6]
    busy = alice.create_chat("Busy")["chatId"]
    with db.transaction() as tx:  # more matching messages than are worth ranking
        tx.execute(
            "INSERT INTO messages (id, chat_id, position, role, content) "
            "SELECT gen_random_uuid(), :chat, n, 'user', :word || ' number ' || n "
            "FROM generate_series(0, :last) n",
            chat=uuid.UUID(busy),
            word=word,
            last=SEARCH_RANKED_HITS,
        )
    quiet = alice.create_chat("Quiet")["chatId"]
    add_messages(db, quiet, [f"just one {word} here", "ok"])
    titled = alice.create_chat(f"About {word}")["chatId"]
    alice.create_chat("No match")

    hits = search(alice, word)
    # Most recently active first (created last here), each with its newest matching message.
    assert [hit["chatId"] for hit in hits] == [titled, quiet, busy]
    assert hits[0]["matchMessageId"] is None and word in hits[0]["snippet"]
    assert hits[2]["snippet"] == f"{word} number {SEARCH_RANKED_HITS}"


def test_a_search_page_holds_20_chats_unless_asked(alice: ApiClient) -> None:
    word = "many" + uuid.uuid4().hex[:6]
    for n in range(21):
        alice.create_chat(f"{word} {n}")
    first = alice.get("/api/chats", params={"q": word})
    assert len(first.json()) == 20 and "X-Next-Cursor" in first.headers
    assert len(search(alice, word, limit=21)) == 21
    assert len(alice.get("/api/chats").json()) == 21  # the plain list keeps its 100
