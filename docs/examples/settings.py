"""Connection settings: one pydantic model per backend, credentials as SecretStr.

Run: python docs/examples/settings.py   (builds settings only; nothing is contacted)
Expect: password=SecretStr('**********')
Expect: nats://orders:***@nats.internal:4222
"""

import os
from pathlib import Path

from pydantic import SecretStr

import brokers
from brokers import KafkaSettings, NatsSettings, TLSSettings

# Kafka (or Redpanda, Confluent Cloud, MSK...) with SASL/SCRAM over TLS
kafka = KafkaSettings(
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    username=os.environ.get("KAFKA_USER", "orders-service"),
    password=SecretStr(os.environ.get("KAFKA_PASSWORD", "change-me")),
    tls=TLSSettings(cafile=Path("/etc/ssl/kafka-ca.pem")),
    connect_timeout=5.0,
)

# NATS with a credentials file (JWT + nkey), TLS with a client certificate
nats = NatsSettings(
    creds_file=Path("/etc/nats/orders.creds"),
    tls=TLSSettings(
        cafile=Path("/etc/ssl/nats-ca.pem"),
        certfile=Path("/etc/ssl/orders.pem"),
        keyfile=Path("/etc/ssl/orders.key"),
    ),
    prefix="orders",  # every stream, subject and bucket neuroplex creates starts with it
)

# secrets never show in a repr, a log line or an error message; the backend alone reads them
# (with .get_secret_value()) when it connects
print(f"password={kafka.password!r}")
assert "change-me" not in repr(kafka)

# passwords in URLs are redacted the same way (broker.url is always the redacted form)
print(brokers.redact_url("nats://orders:s3cret@nats.internal:4222"))

# settings are validated when built: a wrong value is refused at once, naming the field
try:
    KafkaSettings(sasl_mechanism="GSSAPI")  # type: ignore[arg-type]  # on purpose: invalid
except brokers.ConfigurationError as exc:  # pydantic's ValidationError is its __cause__
    print(exc)
print(f"ok: {type(nats).__name__} for {nats.creds_file}")
