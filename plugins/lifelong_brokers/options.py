"""The options both broker readers share (``kafka`` and ``redis``): record format, labels, held-out data, timing.

:class:`BrokerOptions` is the base dataclass; each reader subclasses it and adds its connection
options (``KafkaOptions`` in :mod:`lifelong_brokers.kafka`, the Redis options in
:mod:`lifelong_brokers.redis_reader`). Same names, same meaning in both; see the contract in the
lifelong docs (docs/plugins.md lists every field with its help text).

>>> options = BrokerOptions(features=["a", "b"], num_classes=3)
>>> options.check()
>>> BrokerOptions(num_classes=3).check()
Traceback (most recent call last):
...
ValueError: format json needs the features: list them in features, or name the array field (features_field) and its width num_features
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

MAX_TEST_SIZE = 1_000_000  # held-out records per experience: they live in memory and in positions


@dataclass
class BrokerOptions:
    format: Literal["json", "csv"] = field(default="json", metadata={"help": "message format: json (one object per message) or csv (one line per message, no header)"})
    features: list[str] = field(default_factory=list, metadata={"help": "json: the numeric feature fields, in this order (csv: ignored, see columns)"})
    features_field: str = field(default="x", metadata={"help": "json: the field holding the feature array, used when features is empty"})
    num_features: int = field(default=0, metadata={"help": "json: width of the features_field array (required when features is empty)"})
    columns: list[str] = field(default_factory=list, metadata={"help": "csv: the column names of a line, in order (required for csv); every column but label/experience/key/timestamp is a feature"})
    label: str = field(default="label", metadata={"help": "label field / column; null, absent or empty: the record is unlabeled (counted, not trained on)"})
    experience: str = field(default="", metadata={"help": "experience id field / column (non-negative integers); empty: none"})
    key: str = field(default="", metadata={"help": "record key field / column (held-out hash); empty: the message key (kafka) or entry id (redis)"})
    timestamp: str = field(default="", metadata={"help": "timestamp field / column, carried along; empty: none"})
    classes: list[str] | None = field(default=None, metadata={"help": "declared label values in head order; an unknown label is a dead letter"})
    num_classes: int = field(default=0, metadata={"help": "without classes: the head size; new labels take the next free index, past it they are dead letters"})
    scenario: Literal["class", "domain"] = field(default="class", metadata={"help": "class or domain incremental (one head)"})
    test_fraction: float = field(default=0.0, metadata={"help": "share of labeled records held out, chosen by a hash of (seed, record key)"})
    test_size: int = field(default=1000, metadata={"help": "at most this many held-out records per experience (later ones are trained on)"})
    experience_records: int = field(default=0, metadata={"help": "task-free streams: a new experience id every N records consumed (0: off)"})
    normalize: Literal["none", "standard"] = field(default="none", metadata={"help": "standard: the model scales inputs (StreamInfo.normalize)"})
    batch_timeout: float = field(default=1.0, metadata={"help": "seconds: a partial batch is yielded once its oldest record waited this long"})
    idle_timeout: float = field(default=0.0, metadata={"help": "seconds with no records after which the stream ends (0: never)"})
    reader_process: bool = field(default=True, metadata={"help": "run the reader (consuming, decoding, batching) in a forked child process: the training process only receives batches (see lifelong_brokers.reader_process); false: on the kernel's reader thread"})
    decode_processes: int = field(default=-1, metadata={"help": "child processes (forked) that decode each poll beside the reader; 0: in the reader; -1: one per four CPUs, up to 4 (below four CPUs: none with reader_process, else 1; see lifelong_brokers.decode_process)"})

    def check(self) -> None:
        if self.format == "json":
            if not self.features and (not self.features_field or self.num_features <= 0):
                raise ValueError(
                    "format json needs the features: list them in features, or name the array field "
                    "(features_field) and its width num_features"
                )
            names = list(self.features)
        else:
            if not self.columns:
                raise ValueError("format csv needs columns: the names of a line's columns, in order")
            names = list(self.columns)
            if len(set(names)) != len(names):
                raise ValueError(f"columns must be distinct names, got {names}")
            for role in ("label", "experience", "key", "timestamp"):
                value = getattr(self, role)
                if value and value not in names:
                    raise ValueError(f"{role} column {value!r} is not among columns {names}")
            if not [n for n in names if n not in self.roles()]:
                raise ValueError("columns has no feature column: every column but label/experience/key/timestamp is a feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features must be distinct names, got {self.features}")
        taken = [r for r in self.roles() if r]
        if len(set(taken)) != len(taken):
            raise ValueError(f"label, experience, key and timestamp must name different fields, got {taken}")
        if self.format == "json" and set(self.features) & set(taken):
            raise ValueError(f"a feature field is also the label/experience/key/timestamp field: {sorted(set(self.features) & set(taken))}")
        if not self.label:
            raise ValueError("label must name the label field / column")
        if self.classes is not None:
            if not self.classes or len(set(c.strip() for c in self.classes)) != len(self.classes) or not all(c.strip() for c in self.classes):
                raise ValueError(f"classes must list distinct non-empty label values, got {self.classes}")
        elif self.num_classes <= 0:
            raise ValueError("set classes (the label values in head order) or num_classes (the head size for open classes)")
        if self.classes is not None and self.num_classes and self.num_classes != len(self.classes):
            raise ValueError(f"num_classes {self.num_classes} does not match the {len(self.classes)} declared classes (leave it 0)")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if not 1 <= self.test_size <= MAX_TEST_SIZE:
            raise ValueError(f"test_size must be between 1 and {MAX_TEST_SIZE:,}, got {self.test_size}")
        if self.experience_records < 0:
            raise ValueError(f"experience_records must be >= 0, got {self.experience_records}")
        if self.experience_records and self.experience:
            raise ValueError("set experience (an id field) or experience_records (windows), not both")
        if self.batch_timeout <= 0:
            raise ValueError(f"batch_timeout must be > 0 seconds, got {self.batch_timeout}")
        if not -1 <= self.decode_processes <= 64:
            raise ValueError(f"decode_processes must be -1 (auto), 0 (in the reader thread) or up to 64, got {self.decode_processes}")
        if self.idle_timeout < 0:
            raise ValueError(f"idle_timeout must be >= 0 seconds (0: never), got {self.idle_timeout}")

    def roles(self) -> tuple[str, str, str, str]:
        """The label, experience, key and timestamp field names ("" where unused)."""
        return (self.label, self.experience, self.key, self.timestamp)
