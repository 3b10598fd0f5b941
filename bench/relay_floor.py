"""A relay thread for every stream vs one for all: CPU per streamed chunk (issue 17).

An experiment, in process, no stack: does the thread-per-stream design cost the gap between
a chunk's ~130 µs in a chat_stream worker and the ~20-30 µs its Python takes in a hot loop,
and would one thread multiplexing every stream over epoll reach the 40 µs target?

Three processes (``spawn``), talking over loopback TCP (``TCP_NODELAY``, as the real sockets):

* the **feeder** (the "model"): accepts the relay's ``STREAMS`` connections, answers each with
  an HTTP/1.1 200 head and a chunked body, then writes Gemini-shaped SSE events at ``RATE``
  per second on each stream (one chunked-transfer chunk per ``data: {...}\\r\\n\\r\\n`` event,
  the streams' sends spread evenly over each period), the event's text stamped
  ``<stream>:<sequence>:<send time>`` before a ~60-character answer piece;
* the **sink** (the clients): connects ``STREAMS`` times to the relay and reads, checking
  that each connection carries one stream's events in order with none missing, and noting
  each chunk's latency (send stamp -> arrival);
* the **relay** under test, this process, nothing else running in it: per chunk the same
  work in every design, production's own code where it runs as is: ``shared.sse_client``'s
  chunked-transfer decoding and SSE split with its ``json.loads`` (``_Reader._chunked``,
  ``_events``), ``shared.gemini_raw.read_chunk``, the answer's length as ``event_id``,
  ``shared.stream_framing.SSE.chunk`` and gunicorn's chunked-transfer framing of the write.

The designs:

* **A, a thread per stream** (production): each thread reads its model socket with
  ``shared.sse_client._Reader.recv`` (non-blocking socket, ``poll`` then ``recv``) and writes
  its client socket with a blocking ``sendall`` (gunicorn's ``write_chunk``).
* **A on one CPU**: the same, the process's threads confined to one CPU
  (``sched_setaffinity``), which cut the GIL's cross-CPU futex traffic in ``chunk_cost``.
  Left out at 200 x 50/s: one CPU cannot carry A's 10,000 chunks/s (it falls seconds
  behind, and a backlog is batched, so cheaper per chunk: not comparable).
* **B, one thread for all**: a ``selectors.DefaultSelector`` (epoll) over every model
  socket; on readable a non-blocking ``recv``, its bytes handed to the same decoder
  generators (``_Reader.recv`` replaced by a function returning them), a non-blocking
  ``send`` (what the client socket does not take is kept and sent when it is writable).
* **B with 5 ms ticks**: the same, sleeping after each pass until 5 ms after its wake-up, so
  one ``epoll_wait`` finds more streams' chunks waiting (a chunk waits up to 5 ms longer).

CPU per chunk depends on how many model chunks one ``recv`` and one client write carry
(chunks that piled up are decoded and written together): a relay that falls behind looks
cheaper. So each row also says how many chunks a write carried; compare designs at ~1.

Measured over each load (``SECONDS`` of chunks on every stream, ``ROUNDS`` rounds, the
designs interleaved): the relay process's user and system CPU and context switches
(``getrusage``) per chunk delivered, its syscalls by name (``perf stat`` on the process, as
``chunk_cost``; left out without perf), model chunks per client write (how much the relay
batched), and the chunks' latency p50/p99 (latency is the loaded machine's: compare CPU).
The **hot-loop floor** is the same decode, parse and framing on pre-made bytes, one stream
in one thread, no socket (best of 5 x ``FLOOR_CHUNKS``), and beside it a loopback ``send`` +
``recv`` of one model frame in one thread, the data always waiting (the syscalls, hot).

Not in any design: TLS (Gemini is HTTPS: one more ``SSL_read`` per recv), the turn's
bookkeeping (``TurnRecord.observe``, the answer's accumulation, heartbeats, progress notes),
gunicorn/werkzeug's layers between the WSGI iterator and the socket, and other requests'
threads sharing the GIL. On loopback a ``send`` also runs the receiving side's TCP input
and wakes the reader, charged to the sender: the relay pays for the sink's delivery.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import re
import resource
import selectors
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Generator, Iterator
from multiprocessing.connection import Connection
from typing import Any

# At the top: an import statement in the per-chunk code would cost ~3 µs a chunk.
from shared.gemini_raw import read_chunk
from shared.sse_client import _events, _Reader
from shared.stream_framing import SSE

STREAMS = 200
LOADS = [(STREAMS, 50), (STREAMS, 15)]  # (streams, chunks per second on each)
SECONDS = 3.0
ROUNDS = 3
FLOOR_CHUNKS = 20_000
RECV_BYTES = 65536  # as shared.sse_client
# Readers' heartbeat and silence: longer than a round, so they never fire.
HEARTBEAT_SECONDS, SILENCE_SECONDS = 30.0, 60.0
# Longest a round may take beyond its load before it is called failed.
ROUND_GRACE_SECONDS = 60.0

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
    b"Cache-Control: no-cache\r\n\r\n"
)
END_OF_BODY = b"0\r\n\r\n"
# A streamed GenerateContentResponse as Vertex AI sends one (the Gemini API's differs only in
# leaving out createTime); usageMetadata on every chunk, as Gemini sends it.
_TEXT_MARK = "\x00"
_EVENT = json.dumps(
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": _TEXT_MARK}]}, "index": 0}],
        "usageMetadata": {
            "promptTokenCount": 1234,
            "candidatesTokenCount": 15,
            "totalTokenCount": 1249,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1234}],
        },
        "modelVersion": "gemini-2.5-flash",
        "createTime": "2026-11-26T15:00:00.000000Z",
        "responseId": "abcdefghijklmnopqrstuv",
    },
    separators=(",", ":"),
)
_BEFORE_TEXT, _AFTER_TEXT = _EVENT.split(json.dumps(_TEXT_MARK)[1:-1])
EVENT_HEAD = b"data: " + _BEFORE_TEXT.encode()
EVENT_TAIL = _AFTER_TEXT.encode() + b"\r\n\r\n"
ANSWER_PIECE = "and a streamed piece of the model's answer, about sixty characters"
STAMP = re.compile(rb"(\d+):(\d+):(\d+\.\d+) ")


def model_frame(stream: int, sequence: int) -> bytes:
    """One chunked-transfer chunk holding one SSE event, its text stamped with the time now."""
    text = f"{stream}:{sequence}:{time.time():.6f} {ANSWER_PIECE}".encode()
    event = EVENT_HEAD + text + EVENT_TAIL
    return b"%x\r\n%s\r\n" % (len(event), event)


# --- the feeder and the sink (child processes; their CPU is not counted) ---


def feeder_main(control: Connection) -> None:
    """Serve rounds: accept the relay's connections, send heads, then the events on "go"."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    control.send(listener.getsockname()[1])
    while (command := control.recv()) is not None:
        streams, rate, seconds = command
        sockets = [listener.accept()[0] for _ in range(streams)]
        for sock in sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(HEAD)
        control.send("ready")
        control.recv()  # go
        per_stream = int(rate * seconds)
        interval = 1.0 / (streams * rate)
        start = time.monotonic()
        sent, total = 0, streams * per_stream
        while sent < total:
            due = min(total, int((time.monotonic() - start) / interval) + 1)
            while sent < due:
                stream, sequence = sent % streams, sent // streams
                sockets[stream].sendall(model_frame(stream, sequence))
                sent += 1
            # At least 1 ms: ~10 streams' events per wake-up at 10,000 per second.
            time.sleep(max(0.001, start + sent * interval - time.monotonic()))
        for sock in sockets:
            sock.sendall(END_OF_BODY)
            sock.close()
        control.send(per_stream)
    listener.close()


def sink_main(control: Connection) -> None:
    """Serve rounds: connect to the relay, read every stream to its end, check and time it."""
    while (command := control.recv()) is not None:
        port, streams = command
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(streams)]
        control.send("connected")
        control.send(drain(sockets))


def drain(sockets: list[socket.socket]) -> dict[str, Any]:
    """Read the relay's client sockets to their end: per connection the stream it carried,
    the chunks in order, a proper end of body; every chunk's latency in ms."""
    selector = selectors.DefaultSelector()
    state: dict[socket.socket, dict[str, Any]] = {}
    for sock in sockets:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, sock)
        state[sock] = {"buffer": b"", "stream": None, "next": 0, "faults": 0}
    latencies: list[float] = []
    results: list[tuple[int | None, int, int, bool]] = []
    deadline = time.monotonic() + ROUND_GRACE_SECONDS + SECONDS * 2
    while state and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.data
            entry = state[sock]
            data = sock.recv(RECV_BYTES)
            arrived = time.time()
            if not data:
                selector.unregister(sock)
                sock.close()
                del state[sock]
                ended = entry["buffer"].endswith(END_OF_BODY)
                results.append((entry["stream"], entry["next"], entry["faults"], ended))
                continue
            buffer = entry["buffer"] + data
            # Only whole SSE events (a blank line ends each): a stamp may be cut in two.
            cut = buffer.rfind(b"}\n\n") + 3 if b"}\n\n" in buffer else 0
            entry["buffer"] = buffer[cut:]
            for stream, sequence, sent in STAMP.findall(buffer, 0, cut):
                if entry["stream"] is None:
                    entry["stream"] = int(stream)
                if int(stream) != entry["stream"] or int(sequence) != entry["next"]:
                    entry["faults"] += 1
                entry["next"] = int(sequence) + 1
                latencies.append((arrived - float(sent)) * 1000)
    for sock, entry in state.items():  # not ended in time
        results.append((entry["stream"], entry["next"], entry["faults"] + 1, False))
        sock.close()
    selector.close()
    return {"streams": results, "latencies": latencies}


# --- the per-chunk work, the same in every design ---


class Relayed:
    """One stream's relay state: the client socket, the answer's length, counters."""

    def __init__(self, model: socket.socket, client: socket.socket) -> None:
        self.model = model
        self.client = client
        self.length = 0  # code points relayed: each chunk's event_id, as shared.answers
        self.writes = 0
        self.chunks = 0
        model.settimeout(0.0)  # as stream_events reads: non-blocking, waited on by poll
        self.reader = _Reader(model, HEARTBEAT_SECONDS, SILENCE_SECONDS)
        head = drive(self.reader.head())
        assert head[0] == 200, head
        self.events = _events(self.reader.body(head[2]))
        # Design B only: one recv's bytes, waiting for the decoder to ask for them.
        self.received: bytes | None = None
        self.unsent = bytearray()
        self.ended = False

    def frame(self, batch: list[Any]) -> bytes:
        """The client's bytes for the events of one recv: one chunk event, chunked (gunicorn)."""
        text = ""
        for response in batch:
            text += read_chunk(response).text
        self.length += len(text)
        event = SSE.chunk(text, self.length).encode()
        self.writes += 1
        self.chunks += len(batch)
        return b"%X\r\n%s\r\n" % (len(event), event)

    def take_received(self) -> bytes | None:
        """Design B's ``_Reader.recv``: the bytes the selector loop read, once; then None,
        which the decoder yields up as an empty batch (a heartbeat): "nothing more now"."""
        data, self.received = self.received, None
        return data


def drive(generator: Generator[Any, None, Any]) -> Any:
    """Run a generator that yields heartbeats to its end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


# --- the designs ---


def relay_thread(stream: Relayed) -> None:
    """Design A: one stream, as chat_stream's request thread relays it."""
    for batch in stream.events:
        if batch:
            stream.client.sendall(stream.frame(batch))
    stream.client.sendall(END_OF_BODY)
    stream.client.close()
    stream.model.close()


def threads_per_stream(streams: list[Relayed]) -> Callable[[], None]:
    """Design A: a thread per stream, started now (blocked in poll until the load starts);
    the returned function waits for them all."""
    threads = [threading.Thread(target=relay_thread, args=(stream,)) for stream in streams]
    for thread in threads:
        thread.start()

    def wait() -> None:
        for thread in threads:
            thread.join()

    return wait


def one_thread(streams: list[Relayed], tick: float = 0.0) -> Callable[[], None]:
    """Design B: every stream relayed by the calling thread over one selector; the selector's
    wake-ups are counted in ``WAKEUPS`` (reset here). With a ``tick``, the thread sleeps
    after each pass until ``tick`` seconds after its start, so one wake-up finds more
    streams' chunks waiting (a chunk waits up to a tick longer)."""
    selector = selectors.DefaultSelector()
    wakeups = WAKEUPS
    wakeups[0] = 0
    for stream in streams:
        stream.reader.recv = stream.take_received  # type: ignore[method-assign]
        stream.client.setblocking(False)
        selector.register(stream.model, selectors.EVENT_READ, stream)

    def write(stream: Relayed, data: bytes) -> None:
        if stream.unsent:
            stream.unsent += data
            return
        try:
            sent = stream.client.send(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            stream.unsent += data[sent:]
            selector.register(stream.client, selectors.EVENT_WRITE, stream)

    def finish(stream: Relayed) -> None:
        stream.client.close()

    def run() -> None:
        live = len(streams)
        while live:
            ready = selector.select()
            woke = time.monotonic()
            wakeups[0] += 1
            for key, _ in ready:
                stream: Relayed = key.data
                if key.fileobj is stream.client:  # writable again
                    sent = stream.client.send(stream.unsent)
                    del stream.unsent[:sent]
                    if not stream.unsent:
                        selector.unregister(stream.client)
                        if stream.ended:
                            finish(stream)
                            live -= 1
                    continue
                try:
                    data = stream.model.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    raise ConnectionError("the model closed a stream before its end")
                stream.received = data
                for batch in stream.events:
                    if not batch:
                        break  # the decoder asked for more bytes
                    write(stream, stream.frame(batch))
                else:  # the body's end
                    selector.unregister(stream.model)
                    stream.model.close()
                    write(stream, END_OF_BODY)
                    stream.ended = True
                    if not stream.unsent:
                        finish(stream)
                        live -= 1
            if tick:
                time.sleep(max(0.0, woke + tick - time.monotonic()))
        selector.close()

    return run


def pinned_threads_per_stream(streams: list[Relayed]) -> Callable[[], None]:
    """Design A with the process's threads on one CPU (threads inherit the affinity)."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    wait = threads_per_stream(streams)

    def wait_and_unpin() -> None:
        wait()
        os.sched_setaffinity(0, allowed)

    return wait_and_unpin


# Design B's selector wake-ups in its last round.
WAKEUPS = [0]

DESIGNS: dict[str, Callable[[list[Relayed]], Callable[[], None]]] = {
    "A thread per stream": threads_per_stream,
    "A, one CPU": pinned_threads_per_stream,
    "B one thread": one_thread,
    "B, 5 ms ticks": functools.partial(one_thread, tick=0.005),
}
# A on one CPU is left out at 10,000 chunks/s: one CPU cannot carry it (it falls seconds
# behind, so it measures a backlog).
SKIPPED = {("A, one CPU", 50)}


# --- a round ---


@contextlib.contextmanager
def syscall_counts() -> Iterator[dict[str, float]]:
    """This process's syscalls by name over the block (``perf stat``, as bench chunk_cost;
    empty without perf). Attached to the threads alive when the block starts."""
    from bench.chunk_cost import parse_perf, perf_command

    counts: dict[str, float] = {}
    command = perf_command(os.getpid())
    perf = None
    if command is not None:
        perf = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.3)  # attached before the load starts
    try:
        yield counts
    finally:
        if perf is not None:
            perf.send_signal(2)  # SIGINT: perf prints its counts and ends
            _, report = perf.communicate(timeout=30)
            counts.update(parse_perf(report))


def one_round(
    feeder: Connection,
    feeder_port: int,
    sink: Connection,
    design: Callable[[list[Relayed]], Callable[[], None]],
    streams: int,
    rate: int,
) -> dict[str, Any]:
    """One load through one design: the relay's CPU per chunk, checked delivery, latency."""
    from bench.chat_stream import percentile

    feeder.send((streams, rate, SECONDS))
    models = [socket.create_connection(("127.0.0.1", feeder_port)) for _ in range(streams)]
    for model in models:
        model.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert feeder.recv() == "ready"
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    sink.send((listener.getsockname()[1], streams))
    clients = [listener.accept()[0] for _ in range(streams)]
    listener.close()
    for client in clients:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert sink.recv() == "connected"
    relayed = [Relayed(model, client) for model, client in zip(models, clients, strict=True)]
    WAKEUPS[0] = 0
    wait = design(relayed)
    with syscall_counts() as counts:
        before = resource.getrusage(resource.RUSAGE_SELF)
        feeder.send("go")
        wait()
        after = resource.getrusage(resource.RUSAGE_SELF)
    per_stream = feeder.recv()
    delivered = sink.recv()
    chunks = sum(stream.chunks for stream in relayed)
    faults = sum(1 for _, _, faults, ended in delivered["streams"] if faults or not ended)
    faults += sum(1 for _, count, _, _ in delivered["streams"] if count != per_stream)
    faults += abs(streams - len({stream for stream, *_ in delivered["streams"]}))
    if chunks != streams * per_stream or faults:
        raise RuntimeError(
            f"the relay lost data: {chunks} of {streams * per_stream} chunks, "
            f"{faults} streams wrong"
        )
    latencies = delivered["latencies"]
    result = {
        "chunks": chunks,
        "cpu_us_per_chunk": (
            (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / chunks * 1e6
        ),
        "user_us_per_chunk": (after.ru_utime - before.ru_utime) / chunks * 1e6,
        "system_us_per_chunk": (after.ru_stime - before.ru_stime) / chunks * 1e6,
        "voluntary_switches_per_chunk": (after.ru_nvcsw - before.ru_nvcsw) / chunks,
        "involuntary_switches_per_chunk": (after.ru_nivcsw - before.ru_nivcsw) / chunks,
        "chunks_per_write": chunks / sum(stream.writes for stream in relayed),
        # Design B: chunks per selector wake-up (0: a design without one).
        "chunks_per_wakeup": chunks / WAKEUPS[0] if WAKEUPS[0] else 0.0,
        "latency_p50_ms": percentile(latencies, 0.5),
        "latency_p99_ms": percentile(latencies, 0.99),
    }
    for name, count in counts.items():
        if name == "syscalls" or name in ("sys_futex", "sys_poll", "sys_epoll_wait"):
            result[f"{name}_per_chunk"] = count / chunks
    return result


# --- the hot-loop floor ---


def floor_us() -> dict[str, float]:
    """The same per-chunk work on pre-made bytes, one thread, no socket: µs of CPU per chunk
    for the decoding (chunked, SSE, ``json.loads``) and for all of it (with ``read_chunk``,
    the SSE chunk event and the chunked framing); and the syscalls' floor: one model frame
    ``send`` and ``recv`` over loopback TCP in the same thread (the data always there)."""
    frame = model_frame(0, 0)

    def events() -> Iterator[list[Any]]:
        reader = _Reader(None, HEARTBEAT_SECONDS, SILENCE_SECONDS)  # type: ignore[arg-type]
        left = [FLOOR_CHUNKS]

        def recv() -> bytes:
            left[0] -= 1
            return frame if left[0] >= 0 else END_OF_BODY

        reader.recv = recv  # type: ignore[method-assign]
        return _events(reader._chunked())

    def decode() -> None:
        for _batch in events():
            pass

    def whole() -> None:
        stream = Relayed.__new__(Relayed)
        stream.length = stream.writes = stream.chunks = 0
        for batch in events():
            stream.frame(batch)

    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver = listener.accept()[0]
    listener.close()
    for sock in (sender, receiver):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_recv() -> None:
        for _ in range(FLOOR_CHUNKS):
            sender.send(frame)
            receiver.recv(RECV_BYTES)

    results = {}
    for name, work in (("decode", decode), ("whole", whole), ("send_recv", send_recv)):
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            work()
            best = min(best, (time.process_time() - start) / FLOOR_CHUNKS * 1e6)
        results[f"{name}_us_per_chunk"] = best
    sender.close()
    receiver.close()
    return results


# --- the bench ---


def run() -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    feeder_control, feeder_end = context.Pipe()
    sink_control, sink_end = context.Pipe()
    feeder = context.Process(target=feeder_main, args=(feeder_end,), daemon=True)
    sink = context.Process(target=sink_main, args=(sink_end,), daemon=True)
    feeder.start()
    sink.start()
    load_before = os.getloadavg()[0]
    rounds: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    try:
        feeder_port = feeder_control.recv()
        floor = floor_us()
        for _ in range(ROUNDS):
            for streams, rate in LOADS:
                for name, design in DESIGNS.items():
                    if (name, rate) in SKIPPED:
                        continue
                    result = one_round(
                        feeder_control, feeder_port, sink_control, design, streams, rate
                    )
                    rounds.setdefault((name, streams, rate), []).append(result)
        floor_after = floor_us()
    finally:
        feeder_control.send(None)
        sink_control.send(None)
        feeder.join(timeout=10)
        sink.join(timeout=10)
        for process in (feeder, sink):
            if process.is_alive():
                process.kill()
                process.join()
    load = (load_before, os.getloadavg()[0])
    results: dict[str, Any] = {
        "load_average": load,
        "floor": {key: min(floor[key], floor_after[key]) for key in floor},
        "designs": {},
    }
    print(
        f"relay floor: {STREAMS} streams, loopback TCP, SSE, {SECONDS:.0f} s loads, medians of "
        f"{ROUNDS} interleaved rounds, the relay process's CPU per chunk delivered "
        f"(load average {load[0]:.1f} -> {load[1]:.1f})"
    )
    for (name, streams, rate), entries in rounds.items():
        row = {
            key: statistics.median(entry[key] for entry in entries)
            for key in entries[0]
            if key != "chunks"
        }
        row["rounds_cpu_us_per_chunk"] = [entry["cpu_us_per_chunk"] for entry in entries]
        results["designs"][f"{name}, {streams} x {rate}/s"] = row
        spread = ", ".join(f"{value:.0f}" for value in row["rounds_cpu_us_per_chunk"])
        syscalls = (
            f"; syscalls {row['syscalls_per_chunk']:.2f} (futex "
            f"{row.get('sys_futex_per_chunk', 0.0):.2f})"
            if "syscalls_per_chunk" in row
            else ""
        )
        wakeups = (
            f" (per epoll wake-up {row['chunks_per_wakeup']:.2f})"
            if row["chunks_per_wakeup"]
            else ""
        )
        print(
            f"  {name:>19}, {streams} x {rate:>2}/s: CPU {row['cpu_us_per_chunk']:5.1f} µs "
            f"(rounds {spread}; user {row['user_us_per_chunk']:.1f}, system "
            f"{row['system_us_per_chunk']:.1f}), switches voluntary "
            f"{row['voluntary_switches_per_chunk']:.2f} involuntary "
            f"{row['involuntary_switches_per_chunk']:.2f}{syscalls}, chunks per write "
            f"{row['chunks_per_write']:.2f}{wakeups}, latency p50 "
            f"{row['latency_p50_ms']:.1f} ms p99 {row['latency_p99_ms']:.1f} ms"
        )
    print(
        f"  hot-loop floor (pre-made bytes, one thread, no socket): decoding "
        f"{results['floor']['decode_us_per_chunk']:.1f} µs, decoding + read_chunk + framing "
        f"{results['floor']['whole_us_per_chunk']:.1f} µs per chunk; a loopback TCP send + recv "
        f"of one model frame, hot: {results['floor']['send_recv_us_per_chunk']:.1f} µs"
    )
    return results


if __name__ == "__main__":
    run()
