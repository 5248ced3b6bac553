#!/usr/bin/env python3
"""bench/recovery.py: how fast two sluice nodes on one Redis recover.

Driven by `bench/run redis-recovery`, which starts Redis and the two nodes
(both with --redis) and stops them after. Two kinds of rounds, each
--rounds times, alternating:

restart  SIGKILL the redis-server, start a new one on the same port (empty:
         no persistence), then POST to node A every 10 ms until one is
         accepted (202), and wait until a stream on A and one on B have each
         received an event from this round. Figures, from the moment the new
         Redis answers PING: the first accepted publish, and streams flowing
         again (the later of the two streams' first event).
pubsub   CLIENT KILL TYPE pubsub (every node's subscription connection), then
         POST 20 events to node A at once (its publishing connection is not
         a pubsub one, so they are accepted meanwhile); figure: time from the
         kill until the stream on B (and the one on A) holds all 20, in
         order, with no reset event (caught up from the history).

Loopback only, every wait bounded. Prints figures per round, medians, then
one line `RESULT mode=recovery ok=0|1 ...` and `REDIS_PID <pid>` (the Redis
it started last, for bench/run to stop). Needs only the Python standard
library.
"""
import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

HOST = "127.0.0.1"
ROUND_TIMEOUT = 30.0


def now():
    return time.monotonic()


class Stream:
    """One SSE stream: response head, chunked body, SSE lines."""

    def __init__(self, port, path):
        self.sock = socket.create_connection((HOST, port), timeout=5)
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n"
                           % (path, HOST, port)).encode())
        self.sock.setblocking(False)
        self.raw = b""        # bytes not yet de-chunked
        self.text = b""       # de-chunked bytes not yet split into lines
        self.head_done = False
        self.chunk_left = 0   # bytes left in the current chunk
        self.closed = False
        self.event = {}
        self.events = []      # (receive time, event name, id, data)

    def fileno(self):
        return self.sock.fileno()

    def on_readable(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        t = now()
        if not data:
            self.closed = True
            return
        self.raw += data
        if not self.head_done:
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.raw[:end].decode("latin-1")
            if not head.startswith("HTTP/1.1 200") or "chunked" not in head.lower():
                raise RuntimeError("stream answer not a chunked 200: " + head.split("\r\n")[0])
            self.raw = self.raw[end + 4:]
            self.head_done = True
        self._dechunk()
        self._lines(t)

    def _dechunk(self):
        while self.raw:
            if self.chunk_left == 0:
                nl = self.raw.find(b"\r\n")
                if nl < 0:
                    return
                size = int(self.raw[:nl].split(b";")[0], 16)
                if size == 0:
                    self.closed = True
                    return
                self.raw = self.raw[nl + 2:]
                self.chunk_left = size + 2   # data and its CRLF
            take = min(self.chunk_left, len(self.raw))
            piece = self.raw[:take]
            self.chunk_left -= take
            if self.chunk_left < 2:          # part of the trailing CRLF is in piece
                piece = piece[:len(piece) - (2 - self.chunk_left)]
            self.text += piece
            self.raw = self.raw[take:]

    def _lines(self, t):
        while True:
            nl = self.text.find(b"\n")
            if nl < 0:
                return
            line = self.text[:nl].rstrip(b"\r").decode("utf-8", "replace")
            self.text = self.text[nl + 1:]
            if line == "":
                if "data" in self.event:
                    self.events.append((t, self.event.get("event", "message"),
                                        self.event.get("id"), self.event["data"]))
                self.event = {}
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if field == "data" and "data" in self.event:
                    self.event["data"] += "\n" + value
                else:
                    self.event[field] = value

    def close(self):
        self.sock.close()


class Publisher:
    """Keep-alive POSTs to one node; reconnects after an error."""

    def __init__(self, port, channel):
        self.port, self.channel, self.sock, self.buf = port, channel, None, b""

    def post(self, body):
        """Status of the answer, or 0 if the connection failed."""
        for _ in range(2):
            try:
                if self.sock is None:
                    self.sock = socket.create_connection((HOST, self.port), timeout=5)
                    self.buf = b""
                req = ("POST /pub/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                       % (self.channel, len(body))).encode() + body.encode()
                self.sock.sendall(req)
                return self._answer()
            except OSError:
                if self.sock:
                    self.sock.close()
                self.sock = None
        return 0

    def _answer(self):
        deadline = now() + 5
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = self.buf[:end].decode("latin-1")
                length = 0
                for h in head.split("\r\n")[1:]:
                    k, _, v = h.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v)
                if len(self.buf) >= end + 4 + length:
                    self.buf = self.buf[end + 4 + length:]
                    return int(head.split(" ")[1])
            if now() > deadline:
                raise OSError("no answer")
            data = self.sock.recv(65536)
            if not data:
                raise OSError("closed")
            self.buf += data


def redis_cmd(port, *args, timeout=1.0):
    """One command on a fresh connection; the reply's first line, or None."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            req = "*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)
            s.sendall(req.encode())
            return s.recv(4096).split(b"\r\n")[0].decode()
    except OSError:
        return None


def pump(streams, until, deadline):
    """Reads the streams until until() is true or the deadline passes."""
    while not until():
        left = deadline - now()
        if left <= 0:
            return False
        ready, _, _ = select.select(streams, [], [], min(left, 0.005))
        for s in ready:
            s.on_readable()
    return True


def ours(stream, tag):
    """Events on stream whose data is one of this round's publishes."""
    out = []
    for t, name, _id, data in stream.events:
        try:
            d = json.loads(data)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("round") == tag:
            out.append((t, d["k"]))
    return out


def resets(stream):
    return sum(1 for e in stream.events if e[1] != "message")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--redis-port", type=int, required=True)
    ap.add_argument("--redis-pid", type=int, required=True)
    ap.add_argument("--redis-dir", required=True)
    ap.add_argument("--redis-cpu", default="")
    ap.add_argument("--node-a", type=int, required=True)
    ap.add_argument("--node-b", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pubsub-events", type=int, default=20)
    a = ap.parse_args()

    redis_pid = a.redis_pid
    fails = []
    restart_pub, restart_flow, kill_flow, pubsub_b, pubsub_a = [], [], [], [], []
    pub = Publisher(a.node_a, "rec")
    sa = Stream(a.node_a, "/sub/rec")
    sb = Stream(a.node_b, "/sub/rec")
    streams = [sa, sb]

    def warm(tag):
        """One event through A, seen on both streams: both are subscribed."""
        # a node subscribes in Redis a moment after its first stream opened:
        # publish again until both streams have one
        deadline = now() + 10
        while now() < deadline:
            pub.post(json.dumps({"round": tag, "k": 0}))
            if pump(streams, lambda: ours(sa, tag) and ours(sb, tag), now() + 0.2):
                return True
        print("recovery: warm-up %s: A got %d events, B %d (heads %s %s)" %
              (tag, len(sa.events), len(sb.events), sa.head_done, sb.head_done))
        return False

    # both nodes subscribed before the first round
    if not warm("start"):
        print("recovery: the streams never got the first event")
        print("RESULT mode=recovery ok=0")
        return 1

    for r in range(1, a.rounds + 1):
        # ---- restart: SIGKILL, a new redis-server on the same port ----
        tag = "restart-%d" % r
        reset0 = resets(sa) + resets(sb)
        t_kill = now()
        try:
            os.kill(redis_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(500):   # gone (a child of bench/run, or ours: reap it)
            try:
                if os.waitpid(redis_pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            if not os.path.exists("/proc/%d" % redis_pid) or \
                    open("/proc/%d/stat" % redis_pid).read().split(") ")[1][0] == "Z":
                break
            time.sleep(0.01)
        cmd = ["redis-server", "--port", str(a.redis_port), "--bind", HOST, "--save", "",
               "--appendonly", "no", "--dir", a.redis_dir]
        if a.redis_cpu:
            cmd = ["taskset", "-c", a.redis_cpu] + cmd
        log = open(os.path.join(a.redis_dir, "redis-restart.log"), "ab")
        proc = subprocess.Popen(cmd, cwd=a.redis_dir, stdout=log, stderr=log,
                                start_new_session=True)
        redis_pid = proc.pid
        print("REDIS_PID %d" % redis_pid, flush=True)
        t_up = None
        deadline = now() + 10
        while now() < deadline:
            if redis_cmd(a.redis_port, "PING", timeout=0.2) == "+PONG":
                t_up = now()
                break
            time.sleep(0.005)
        if t_up is None:
            fails.append("round %d: the new redis-server did not answer" % r)
            break
        t_ok = None
        k = 0
        deadline = t_up + ROUND_TIMEOUT
        while now() < deadline and not (ours(sa, tag) and ours(sb, tag)):
            k += 1
            st = pub.post(json.dumps({"round": tag, "k": k}))
            if st == 202 and t_ok is None:
                t_ok = now()
            pump(streams, lambda: False, now() + 0.01)
        ga, gb = ours(sa, tag), ours(sb, tag)
        if not (ga and gb and t_ok):
            fails.append("round %d: streams not flowing %.0f s after the restart" %
                         (r, ROUND_TIMEOUT))
            break
        flow = max(ga[0][0], gb[0][0])
        restart_pub.append((t_ok - t_up) * 1e3)
        restart_flow.append((flow - t_up) * 1e3)
        kill_flow.append((flow - t_kill) * 1e3)
        print("restart %d: Redis down %.0f ms (kill -> PONG); from PONG: first accepted "
              "publish %.0f ms, streams flowing %.0f ms (A %.0f, B %.0f); %d publishes "
              "tried; reset events %d" %
              (r, (t_up - t_kill) * 1e3, restart_pub[-1], restart_flow[-1],
               (ga[0][0] - t_up) * 1e3, (gb[0][0] - t_up) * 1e3, k,
               resets(sa) + resets(sb) - reset0), flush=True)
        pump(streams, lambda: False, now() + 0.5)   # let the round's tail arrive

        # ---- pubsub: kill every subscription connection ----
        tag = "pubsub-%d" % r
        if not warm("pre-" + tag):
            fails.append("round %d: no event before CLIENT KILL" % r)
            break
        reset0 = resets(sa) + resets(sb)
        t0 = now()
        killed = redis_cmd(a.redis_port, "CLIENT", "KILL", "TYPE", "pubsub")
        n = a.pubsub_events
        accepted = 0
        for k in range(1, n + 1):
            accepted += pub.post(json.dumps({"round": tag, "k": k})) == 202
        t_pub = now()
        done = pump(streams, lambda: len(ours(sa, tag)) >= n and len(ours(sb, tag)) >= n,
                    now() + ROUND_TIMEOUT)
        ga, gb = ours(sa, tag), ours(sb, tag)
        got_reset = resets(sa) + resets(sb) - reset0
        in_order = [x[1] for x in ga] == list(range(1, n + 1)) and \
            [x[1] for x in gb] == list(range(1, n + 1))
        if not done or accepted != n or not in_order or got_reset:
            fails.append("round %d: after CLIENT KILL %d/%d accepted, A got %d, B got %d, "
                         "in order %s, reset events %d" %
                         (r, accepted, n, len(ga), len(gb), in_order, got_reset))
            break
        pubsub_b.append((gb[-1][0] - t0) * 1e3)
        pubsub_a.append((ga[-1][0] - t0) * 1e3)
        print("pubsub %d: CLIENT KILL answered %s; %d events published through A in "
              "%.0f ms; caught up: B %.0f ms, A %.0f ms after the kill; no reset, in order" %
              (r, killed, n, (t_pub - t0) * 1e3, pubsub_b[-1], pubsub_a[-1]), flush=True)

    for s in streams:
        s.close()
    med = lambda xs: statistics.median(xs) if xs else -1
    print("medians over %d rounds: restart -> first accepted publish %.0f ms, restart -> "
          "streams flowing %.0f ms (from the kill %.0f ms); CLIENT KILL -> caught up on B "
          "%.0f ms (A %.0f ms)" % (len(restart_flow), med(restart_pub), med(restart_flow),
                                   med(kill_flow), med(pubsub_b), med(pubsub_a)))
    for f in fails:
        print("FAIL: " + f)
    print("RESULT mode=recovery ok=%d rounds=%d restart_publish_ms=%.1f restart_flow_ms=%.1f "
          "kill_to_flow_ms=%.1f restart_flow_max_ms=%.1f pubsub_caught_up_ms=%.1f "
          "pubsub_caught_up_a_ms=%.1f pubsub_caught_up_max_ms=%.1f" %
          (0 if fails else 1, len(restart_flow), med(restart_pub), med(restart_flow),
           med(kill_flow), max(restart_flow) if restart_flow else -1, med(pubsub_b),
           med(pubsub_a), max(pubsub_b) if pubsub_b else -1))
    print("REDIS_PID %d" % redis_pid)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
