"""Tokens sent to the model per turn across a 200-turn chat, with and without summaries.

Three ways to build a turn's context, over the same conversation (~90-token questions,
~250-token answers):

* full history: what sending the whole conversation would cost (computed, never sent);
* window only: summaries off (``SUMMARY_TRIGGER_TOKENS`` out of reach): the recent window,
  bounded by ``TARGET_WINDOW_TOKENS``, and everything older is forgotten;
* window + summaries: the default: the window after the newest summary, plus that summary.

Tokens per turn are what the model reported as the prompt (the stand-in counts 4 characters
a token, like the local estimate). With summaries each turn must stay under
``TARGET_WINDOW_TOKENS`` plus one summary (plus the system instruction), at every turn.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
import uuid
from typing import Any

from bench.chat_stream import read_event, start_instance
from bench.harness import stack_with_model
from dev.gemini_standin import StandinControl
from shared.context import SUMMARY_HEADING

TURNS = 200
QUESTION = "Could you tell me more about how ravens solve puzzles and remember faces? " * 5
ANSWER = "Ravens are remarkable problem solvers that cache food and recall people. " * 14


def conversation(url: str, token: str, control: StandinControl, label: str) -> list[dict[str, Any]]:
    chat_id = None
    turns = []
    for turn in range(TURNS):
        marker = f"{label}-{turn}-{uuid.uuid4().hex[:6]}"
        control.script(match=marker, reply=ANSWER)
        body = json.dumps(
            {
                "chatId": chat_id,
                "messages": [
                    {"role": "user", "parts": [{"type": "text", "text": f"{marker} {QUESTION}"}]}
                ],
            }
        )
        request = urllib.request.Request(
            url + "/chat",
            data=body.encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        done: dict[str, Any] = {}
        with urllib.request.urlopen(request, timeout=60) as response:
            for raw in response:
                event = read_event(raw)
                if event is not None:
                    if event["type"] == "start":
                        chat_id = event["chat_id"]
                    elif event["type"] == "done":
                        done = event
        assert done, f"turn {turn} did not finish"
        sent = control.requests(match=marker)[0]["body"]
        system = sent["systemInstruction"]["parts"][0]["text"]
        summary = system.split(f"## {SUMMARY_HEADING}\n", 1)[1] if SUMMARY_HEADING in system else ""
        turns.append(
            {
                "input_tokens": done["usage"]["input_tokens"],
                "summary_tokens": len(summary) // 4,
                "system_tokens": (len(system) - len(summary)) // 4,
                "window_messages": sum(len(c["parts"]) for c in sent["contents"]),
            }
        )
        time.sleep(0.05)  # a person types; lets the queue deliver summaries between turns
    return turns


def run() -> dict[str, Any]:
    with stack_with_model() as (stack, control):
        target = int(stack.env.get("TARGET_WINDOW_TOKENS") or 8000)
        results: dict[str, Any] = {"target_window_tokens": target, "turns": TURNS}
        for label, overrides in (
            ("window_only", {"SUMMARY_TRIGGER_TOKENS": "1000000000"}),
            ("window_and_summaries", {}),
        ):
            process, url = start_instance(stack.env, threads=8, overrides=overrides)
            try:
                token = stack.signer.token(f"user_{label}", lifetime_seconds=7200)
                results[label] = conversation(url, token, control, label)
            finally:
                process.terminate()
                process.wait()

    per_message = (len(QUESTION) + len(ANSWER)) // 4
    full = [per_message * (turn + 1) for turn in range(TURNS)]
    print(
        f"summaries: tokens sent per turn over a {TURNS}-turn chat (TARGET_WINDOW_TOKENS={target})"
    )
    print(
        f"  {'context':<22}{'turn 10':>9}{'turn 50':>9}{'turn 100':>10}{'turn 200':>10}"
        f"{'max':>8}{'mean':>8}"
    )
    print(
        f"  {'full history':<22}{full[9]:>9}{full[49]:>9}{full[99]:>10}{full[199]:>10}"
        f"{max(full):>8}"
        f"{statistics.mean(full):>8.0f}"
    )
    summary_rows = {}
    for label in ("window_only", "window_and_summaries"):
        tokens = [turn["input_tokens"] for turn in results[label]]
        summary_rows[label] = {"max": max(tokens), "mean": statistics.mean(tokens)}
        print(
            f"  {label.replace('_', ' '):<22}{tokens[9]:>9}{tokens[49]:>9}{tokens[99]:>10}"
            f"{tokens[199]:>10}{max(tokens):>8}{statistics.mean(tokens):>8.0f}"
        )
    with_summaries = results["window_and_summaries"]
    bound_ok = all(
        turn["input_tokens"] - turn["summary_tokens"] - turn["system_tokens"] <= target
        for turn in with_summaries
    )
    summarised_turns = sum(1 for turn in with_summaries if turn["summary_tokens"])
    print(
        f"  with summaries, every turn under TARGET_WINDOW_TOKENS + one summary: {bound_ok}"
        f" ({summarised_turns} of {TURNS} turns carried a summary, largest "
        f"{max(t['summary_tokens'] for t in with_summaries)} tokens)"
    )
    results["full_history"] = full
    results["bound_holds"] = bound_ok
    results["table"] = summary_rows
    return results
