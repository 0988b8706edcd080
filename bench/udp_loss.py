"""Benchmark: datagram loss of the ingest UDP source vs a plain blocking receiver, same sender.

The sender (its own process, like ``nmsgtool -s`` without a rate, or at ``--rates``) blasts ``--count``
datagrams at loopback: the live_resolver corpus packed into 8192-byte containers as nmsgtool -s does
(``--bufsz``), cycled. Each receiver runs in its own process for the same sender:

- ``plain``: default SO_RCVBUF, one thread, ``recvfrom`` then decode inline (what a naive reader does);
- ``ingest``: ``ingest.sources.UdpSource`` (largest buffer, receive-only thread, decoding thread); with
  ``--bootstrap-servers`` the whole bridge runs and produces to a fresh raw topic.

Loss = 1 - datagrams received / datagrams sent; the kernel's own drop count is shown for the ingest side.

    python bench/udp_loss.py --count 200000 [--bootstrap-servers 127.0.0.1:9092]
"""

from __future__ import annotations

import argparse
import io
import itertools
import multiprocessing as mp
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from nmsgdns.input import ContainerStreamReader, DatagramDecoder
from nmsgdns.output import ContainerPacker

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "data" / "nmsg" / "live_resolver.nmsg"
IDLE_END = 1.5  # a receiver is done once nothing arrived for this long after the sender finished


def datagrams(bufsz: int) -> list[bytes]:
    payloads = list(ContainerStreamReader(io.BytesIO(CORPUS.read_bytes()), name=str(CORPUS)))
    packer = ContainerPacker(bufsz)
    out = [c for p in payloads for c in packer.add(p)]
    return out + packer.flush()


def send(port: int, count: int, bufsz: int, rate: float, ready: mp.Event, result: mp.Queue) -> None:
    grams = datagrams(bufsz)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("127.0.0.1", port))
    ready.wait()
    sent = 0
    t0 = time.perf_counter()
    for i, d in enumerate(itertools.islice(itertools.cycle(grams), count)):
        if rate:
            ahead = t0 + i / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        try:
            sock.send(d)
            sent += 1
        except OSError:  # ENOBUFS on a full loopback queue: the datagram is not sent
            pass
    result.put(("sent", sent, time.perf_counter() - t0))


def plain_receiver(port: int, ready: mp.Event, done: mp.Event, result: mp.Queue) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(0.2)
    decoder = DatagramDecoder()
    got = payloads = 0
    last = time.monotonic()
    ready.set()
    while not (done.is_set() and time.monotonic() - last > IDLE_END):
        try:
            data, sender = sock.recvfrom(65535)
        except TimeoutError:
            continue
        last = time.monotonic()
        got += 1
        payloads += len(decoder.feed(data, sender))
    result.put(("received", got, payloads, 0))


def ingest_receiver(
    port: int, bootstrap: str | None, ready: mp.Event, done: mp.Event, result: mp.Queue
) -> None:
    from ingest.sources import Batch, Outbox, UdpSource

    source = UdpSource("bench", [("127.0.0.1", port)])
    if bootstrap:
        from confluent_kafka.admin import AdminClient, NewTopic

        from ingest.bridge import Bridge, IngestConfig

        topic = f"bench.udp.{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(30)
        source.close(False)  # the bridge opens its own socket on the port
        cfg = IngestConfig(
            kafka={"bootstrap.servers": bootstrap},
            listen=[f"127.0.0.1/{port}"],
            raw_topic=topic,
            dlq_topic=None,
            progress_bar=False,
            progress_interval=3600,
        )
        bridge = Bridge(cfg)
        (udp,) = bridge.sources
        thread = threading.Thread(target=lambda: result.put(("summary", bridge.run())), daemon=True)
        thread.start()
        ready.set()
        _wait_idle(done, lambda: udp.receiver.datagrams)
        bridge.stop.set()
        thread.join()
        admin.delete_topics([topic])[topic].result(30)
        drops = udp.drop_counts()
        result.put(
            ("received", udp.datagrams, sum(bridge.records_in.values()), drops.get("kernel_rcvbuf", 0))
        )
        return
    out = Outbox()
    payloads = [0]

    def drain() -> None:
        while True:
            item = out.queue.get()
            if isinstance(item, Batch):
                payloads[0] += len(item.payloads)
            elif item is None:
                return

    consumer = threading.Thread(target=drain, daemon=True)
    consumer.start()
    runner = threading.Thread(target=source.run, args=(out,), daemon=True)
    runner.start()
    ready.set()
    _wait_idle(done, lambda: source.receiver.datagrams)
    out.stop.set()
    runner.join()
    out.queue.put(None)
    consumer.join()
    result.put(
        ("received", source.receiver.datagrams, payloads[0], source.drop_counts().get("kernel_rcvbuf", 0))
    )
    source.close(True)


def _wait_idle(done: mp.Event, counter) -> None:
    last_value, last_change = -1, time.monotonic()
    while True:
        value = counter()
        if value != last_value:
            last_value, last_change = value, time.monotonic()
        if done.is_set() and time.monotonic() - last_change > IDLE_END:
            return
        time.sleep(0.05)


def measure(kind: str, count: int, bufsz: int, rate: float, bootstrap: str | None) -> dict[str, float]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    ready, done, result = ctx.Event(), ctx.Event(), ctx.Queue()
    if kind == "plain":
        receiver = ctx.Process(target=plain_receiver, args=(port, ready, done, result))
    else:
        receiver = ctx.Process(target=ingest_receiver, args=(port, bootstrap, ready, done, result))
    receiver.start()
    sender = ctx.Process(target=send, args=(port, count, bufsz, rate, ready, result))
    sender.start()
    sender.join()
    done.set()
    out: dict[str, object] = {}
    while "received" not in out:
        item = result.get(timeout=300)
        out[item[0]] = item[1:]
    receiver.join(60)
    if receiver.is_alive():
        receiver.terminate()
    sent, seconds = out["sent"]
    received, payloads, kernel = out["received"]
    return {
        "sent": sent,
        "rate": sent / seconds,
        "received": received,
        "payloads": payloads,
        "loss": 1 - received / sent,
        "kernel_drops": kernel,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200_000, help="datagrams to send per receiver")
    p.add_argument("--bufsz", type=int, default=8192, help="container size of the sender (nmsgtool -m)")
    p.add_argument("--bootstrap-servers", help="run the whole bridge into Kafka (else the UDP source alone)")
    p.add_argument("--rates", default="0", help="comma-separated datagrams/s; 0 = unthrottled (default)")
    args = p.parse_args(argv)
    per = len(datagrams(args.bufsz))
    print(f"sender: {per} distinct datagrams of <= {args.bufsz} bytes, {args.count} sent per run")
    ours = "ingest bridge->Kafka" if args.bootstrap_servers else "ingest UdpSource"
    for rate, kind in itertools.product([float(r) for r in args.rates.split(",")], ("plain", "ingest")):
        r = measure(kind, args.count, args.bufsz, rate, args.bootstrap_servers)
        target = f"{rate:.0f}/s" if rate else "unthrottled"
        print(
            f"target {target:>11s} {kind if kind == 'plain' else ours:20s} "
            f"sent {r['sent']:.0f} at {r['rate']:,.0f}/s, received {r['received']:.0f} "
            f"({r['payloads']:.0f} payloads), loss {100 * r['loss']:.2f}%"
            + (f", kernel drops {r['kernel_drops']:.0f}" if kind == "ingest" else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
