"""Broker readers: Kafka topics (a consumer group) and Redis Streams (a consumer group), checkpoint then commit.

Both share the record format, labels, held-out sets and batching (:mod:`lifelong_brokers.options`,
:mod:`lifelong_brokers.decode`, :mod:`lifelong_brokers.assemble`); the client libraries are optional
extras imported only when a reader is built (``pip install 'lifelong[kafka]'`` / ``'lifelong[redis]'``).
"""

from lifelong import hookimpl
from lifelong_brokers.kafka import KafkaOptions, kafka_reader
from lifelong_brokers.redis_reader import RedisOptions, redis_reader

__version__ = "0.1.0"


@hookimpl
def register_readers(register):
    register("kafka", kafka_reader, options=KafkaOptions, help="records from Kafka topics through a consumer group; offsets committed after each checkpoint (extra: kafka)")
    register("redis", redis_reader, options=RedisOptions, help="entries of a Redis stream through a consumer group; acknowledged (XACK) after each checkpoint (extra: redis)")
