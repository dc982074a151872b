"""Demo data for a local broker: scikit-learn's digits as JSON records, to a Kafka topic or a Redis stream.

    python deploy/feed.py kafka 127.0.0.1:9092 digits [N]
    python deploy/feed.py redis redis://127.0.0.1:6379/0 digits [N]

Each record is ``{"x": [64 pixel values in [0, 1]], "label": 0-9}`` — what deploy/kafka-pipeline.toml
and deploy/redis-pipeline.toml read (Redis: the JSON in the entry field ``data``). N (default
1,797, the whole set) records, repeating the set when N is larger. Every call is bounded in time.
"""

from __future__ import annotations

import json
import sys


def records(n: int):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(n):
        row = i % len(digits.data)
        yield {"x": [round(v / 16.0, 4) for v in digits.data[row]], "label": int(digits.target[row])}


def to_kafka(bootstrap: str, topic: str, n: int) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for i, record in enumerate(records(n)):
        while True:
            try:
                producer.produce(topic, key=str(i).encode(), value=json.dumps(record).encode())
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    if left:
        sys.exit(f"feed: {left} records not delivered to {bootstrap} within 60 s")


def to_redis(url: str, stream: str, n: int) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    pipe = client.pipeline(transaction=False)
    for i, record in enumerate(records(n), 1):
        pipe.xadd(stream, {"data": json.dumps(record)})
        if i % 1000 == 0:
            pipe.execute()
    pipe.execute()


def main() -> None:
    if len(sys.argv) not in (4, 5) or sys.argv[1] not in ("kafka", "redis"):
        sys.exit("usage: feed.py kafka BOOTSTRAP TOPIC [N] | feed.py redis URL STREAM [N]")
    kind, address, name = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) == 5 else 1797
    (to_kafka if kind == "kafka" else to_redis)(address, name, n)
    print(f"fed {n} digits records to {kind} {address} {name}")


if __name__ == "__main__":
    main()
