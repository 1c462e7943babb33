"""All configuration, read once at start-up from ``INFERENCE_*`` variables and CLI flags.

Nothing else in the server package reads the environment: the entry point builds a
``Settings`` and hands the parts that each component needs to its constructor. (The client
CLI, ``clients/python``, is a separate package and reads ``INFERENCE_TARGET`` itself.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL_FILE = "models/tflite/version-RFB-320_without_postprocessing.tflite"
DEFAULT_MODEL_URL = (
    "https://raw.githubusercontent.com/Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB/"
    "dffdddda9794a50607cba8f318507a28c1c27cab/tflite/pretrained/"
    "version-RFB-320_without_postprocessing.tflite"
)
DEFAULT_MODEL_SHA256 = "2c46b4b60667d11b91adc14074e6196a1ef1d2dbdbabdc65b3bfa18f78de4866"
SLIM_MODEL_FILE = "models/tflite/version-slim-320_without_postprocessing.tflite"
SLIM_MODEL_URL = (
    "https://raw.githubusercontent.com/Linzaer/Ultra-Light-Fast-Generic-Face-Detector-1MB/"
    "dffdddda9794a50607cba8f318507a28c1c27cab/tflite/pretrained/"
    "version-slim-320_without_postprocessing.tflite"
)
SLIM_MODEL_SHA256 = "d0088834c6b68490291f308ff2d388ee83954eac10856abd90e29c7cd9d186fc"


_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_TTL_S = 630_720_000
"""Cassandra's largest TTL (20 years)."""


def split_list(value: object) -> object:
    """A list setting from the environment: a JSON array, or comma-separated items (blanks
    dropped); any other value as it is, for pydantic to check."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def parse_duration_s(text: str) -> int:
    """Seconds of a retention such as ``30d``, ``12h``, ``90m``, ``3600s``, ``2w`` or ``3600``;
    ``forever`` (or ``0``) is 0."""
    if text.strip().lower() in ("forever", "0", ""):
        return 0
    match = _DURATION.fullmatch(text.lower())
    if match is None:
        raise ValueError(f"retention {text!r}: expected a duration like 30d, 12h, 90m or forever")
    seconds = int(match[1]) * _UNIT_S[match[2]]
    if seconds > MAX_TTL_S:
        raise ValueError(f"retention {text!r} is longer than Cassandra's TTL limit (20 years)")
    return seconds


class Settings(BaseSettings):
    """Settings of the inference server. Every field is ``INFERENCE_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="INFERENCE_", extra="ignore", use_attribute_docstrings=True
    )

    # --- gRPC server -------------------------------------------------------
    host: str = "127.0.0.1"
    """Address the gRPC server binds to."""
    port: int = Field(50051, ge=0, le=65535)
    """Port of the gRPC server; 0 picks a free one (tests)."""
    shutdown_grace_s: float = Field(10.0, ge=0)
    """On SIGTERM, how long in-flight calls may run before they are cancelled."""
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    """The event loop of ``serve``: ``asyncio`` (the standard library's) or ``uvloop`` (libuv;
    the ``uvloop`` package must be installed). See docs/performance.md for what each costs."""

    # --- requests ----------------------------------------------------------
    max_content_bytes: int = Field(8 * 1024 * 1024, ge=1)
    """Largest accepted ``input.content``, in bytes (8 MiB). The gRPC message limit and Envoy's
    REST request and response body limits derive from it (``inference_service.limits``).
    """
    max_image_pixels: int = Field(40_000_000, ge=1)
    """Largest accepted decoded image, in pixels (width x height); guards against decompression
    bombs.
    """
    max_metadata_entries: int = Field(64, ge=0)
    """Most metadata entries an input may carry (keys 1-128 bytes, values up to 1024 bytes).
    The message and body limits derive from it too."""
    max_decoded_bytes: int = Field(384 * 1024 * 1024, ge=1)
    """Most memory, in bytes, that decoding one image may take (384 MiB), as computed from its
    header before any pixel is decoded: Pillow's image in its mode (1 to 4 bytes per pixel),
    the decoder's own buffers (a TIFF strip or tile, the coefficients of a progressive JPEG,
    WebP's canvas), the RGB copy the model gets and the conversion's tiles. An image over it is
    INVALID_ARGUMENT. At most ``image_memory_budget_bytes``."""

    # --- load ----------------------------------------------------------------
    image_memory_budget_bytes: int = Field(384 * 1024 * 1024, ge=1)
    """Bytes of images being decoded or held (waiting for the model or in it) at once in one
    server process (384 MiB), counted as ``max_decoded_bytes`` counts them. An Invoke waits up
    to ``admission_wait_s`` for its share, then gets UNAVAILABLE ("server busy, retry")."""
    work_queue_size: int = Field(64, ge=0)
    """Invokes that may wait for one of the ``workers`` (decoding or in the model) beyond those
    the workers run: the bound of the work queue in front of them. One more waits up to
    ``admission_wait_s`` for a place, then gets UNAVAILABLE ("server busy, retry")."""
    admission_wait_s: float = Field(2.0, ge=0)
    """How long an Invoke waits for a place in the work queue and its share of the image memory
    budget before it is answered UNAVAILABLE ("server busy, retry")."""
    max_concurrent_rpcs: int | None = Field(None, ge=1)
    """Calls (of every method, health checks included) the gRPC server runs at once; None (the
    default): no limit. Over it gRPC itself answers RESOURCE_EXHAUSTED ("Concurrent RPC limit
    exceeded!") before any handler runs: a status that means "too large" to this API (413
    through Envoy), and health checks that fail under load take the server out of Envoy's
    rotation. So it is off: Envoy's circuit breaker (``INFERENCE_ENVOY_UPSTREAM_MAX_REQUESTS``)
    bounds the calls in flight to the servers, and admission control answers busy Invokes
    UNAVAILABLE. If set, keep it well above ``workers`` + ``work_queue_size``."""

    # --- models ------------------------------------------------------------
    shared_dir: Path = Path("../shared")
    """Folder holding the shared test data and models (``models/``, ``images/``)."""
    models_file: Path | None = None
    """Model configuration (TOML, or JSON by its suffix): the models to serve, their runtimes
    and sources (docs/operations.md, "Models"). Unset: the built-in ones, ``model_name``
    (RFB-320, the default, alias ``face-detector``) and ``ultraface-slim-320``, both TFLite.
    Re-read on SIGHUP (a reload)."""
    model_path: Path | None = None
    """Built-in models only: the default model's TFLite file. Default: ``<shared_dir>/`` +
    ``DEFAULT_MODEL_FILE`` when it exists, else the file downloaded from ``model_url`` into
    ``model_cache_dir``."""
    model_url: str = DEFAULT_MODEL_URL
    """Built-in models only: where the default model is downloaded from when no local copy
    exists."""
    model_sha256: str = DEFAULT_MODEL_SHA256
    """Built-in models only: expected sha256 of the downloaded default model; a mismatch refuses
    to load it."""
    model_cache_dir: Path = Path("~/.cache/inference-service/models")
    """Where downloaded (HTTP, S3) and unpacked (archives) models are kept."""
    model_name: str = "ultraface-rfb-320"
    """Built-in models only: public name of the default model (``InvokeRequest.model``; empty
    selects it too). ``face-detector``, its former name, stays an alias."""
    s3_endpoint_url: str | None = None
    """Endpoint of an S3-compatible store for ``s3://`` model sources (MinIO, moto, ...);
    unset, AWS's (or ``AWS_ENDPOINT_URL``). Credentials come from boto3's usual chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, an instance role)."""
    s3_region: str | None = None
    """Region of the S3 client; unset, boto3's default (``AWS_DEFAULT_REGION``)."""
    expose_model_sources: bool = False
    """ListModels and GetModel show where each model was loaded from in full (a path on the
    server, a URL without credentials or query). Off: only its kind and file name
    (``file .../face.tflite``, ``https://models.example/.../model.onnx``), so that clients never
    learn the server's file layout."""

    tflite_runtime: Literal["auto", "litert", "tensorflow"] = "auto"
    """Package whose TFLite interpreter runs the model: ``litert`` (ai-edge-litert, ~60 MB
    resident), ``tensorflow`` (tf.lite, ~570 MB resident) or ``auto`` (LiteRT when installed)."""
    model_threads: int = Field(1, ge=1)
    """Threads a model's runtime uses for one image (a model's ``threads`` overrides it)."""
    workers: int = Field(2, ge=1)
    """Images decoded and detected at once (a pool of threads, each with its own interpreter)."""
    score_threshold: float = Field(0.7, gt=0, lt=1)
    """Face score above which a candidate is kept."""
    iou_threshold: float = Field(0.3, gt=0, lt=1)
    """IoU above which overlapping faces are suppressed (hard NMS)."""

    # --- store -------------------------------------------------------------
    store: Literal["cassandra", "memory"] = "cassandra"
    """Where invocations live: ``cassandra`` (default) or ``memory`` (lost on exit; for tests and
    demos).
    """
    cassandra_contact_points: Annotated[list[str], NoDecode] = ["127.0.0.1"]
    """Cassandra hosts to connect to (comma-separated or a JSON list in the environment)."""
    cassandra_port: int = 9042
    """CQL native port."""
    cassandra_local_dc: str = "datacenter1"
    """Local data centre for DC-aware, token-aware routing."""
    cassandra_keyspace: str = "inference"
    """Keyspace holding the ``invocations`` table."""
    cassandra_username: str | None = None
    """Username for PasswordAuthenticator; none means no authentication."""
    cassandra_password: SecretStr | None = None
    """Password for PasswordAuthenticator."""
    cassandra_tls_ca_file: Path | None = None
    """CA certificate(s) (PEM) that signed the nodes' certificates; set, the driver connects
    with TLS (client-to-node encryption) and verifies the nodes."""
    cassandra_tls_verify_hostname: bool = True
    """Check that a node's certificate names the address the driver connects to."""
    cassandra_tls_cert_file: Path | None = None
    """Client certificate (PEM), for clusters that require client certificate authentication."""
    cassandra_tls_key_file: Path | None = None
    """Private key (PEM) of ``cassandra_tls_cert_file``."""
    cassandra_replication_strategy: Literal["SimpleStrategy", "NetworkTopologyStrategy"] = (
        "SimpleStrategy"
    )
    """Replication strategy of the keyspace that ``migrate`` creates: ``SimpleStrategy`` (one
    data centre, e.g. the local dev node) or ``NetworkTopologyStrategy`` (production; RF per
    data centre from ``cassandra_datacenters``)."""
    cassandra_replication_factor: int = Field(1, ge=1)
    """Replication factor for ``SimpleStrategy``. Use 3 on a real cluster: with fewer replicas a
    QUORUM cannot survive the loss of one node."""
    cassandra_datacenters: Annotated[dict[str, int], NoDecode] = {}
    """Replication factor per data centre for ``NetworkTopologyStrategy``, e.g. ``dc1:3,dc2:3``
    (or a JSON object)."""
    cassandra_consistency: str = "LOCAL_QUORUM"
    """Consistency level of reads and writes."""
    cassandra_serial_consistency: Literal["SERIAL", "LOCAL_SERIAL"] = "SERIAL"
    """Serial consistency of the lightweight transactions that claim an id. ``SERIAL`` (the
    default) makes exactly one Invoke win an id across the whole cluster; ``LOCAL_SERIAL`` is
    faster with several data centres but lets one winner per data centre run the model (and
    the last outcome written wins)."""
    cassandra_protocol_version: int = Field(5, ge=3, le=5)
    """CQL native protocol version, set explicitly (no downgrade at connect): 5 for Cassandra
    4.0 and later, 4 for 3.x clusters."""
    cassandra_reconnect_delay_s: float = Field(0.5, gt=0)
    """First delay between reconnection attempts to a node that went down; it doubles up to
    ``cassandra_reconnect_max_delay_s`` and the driver keeps trying forever."""
    cassandra_reconnect_max_delay_s: float = Field(4.0, gt=0)
    """Longest delay between reconnection attempts (how soon a node that is back is used)."""
    cassandra_retry_budget_s: float = Field(10.0, ge=0)
    """How long idempotent writes (content, outcome) and the reads that settle an uncertain
    claim are retried, with exponential backoff, before the call fails with UNAVAILABLE."""
    cassandra_request_timeout_s: float = Field(5.0, gt=0)
    """Per-statement timeout; a timed-out statement fails the call with UNAVAILABLE."""
    cassandra_connect_timeout_s: float = Field(5.0, gt=0)
    """Connection timeout."""
    cassandra_default_ttl_s: int = Field(0, ge=0)
    """Default TTL of stored invocations in seconds; 0 keeps them forever. Set by ``retention``
    (prefer that); both set, they must agree."""
    cassandra_list_bucket_s: int = Field(3600, ge=60, le=31 * 86400)
    """Width, in seconds, of the time buckets of the list index (``invocations_by_time``): one
    partition per bucket (1 hour by default). Fixed when the first invocation is stored: rows
    written under another width are not found by ListInvocations (re-run ``inference-service
    backfill-index`` after changing it). Keep a bucket under ~100 MB: about 300 bytes plus the
    metadata per invocation (1 hour at 100 Invokes/s is ~110 MB with small metadata: lower it
    for such rates)."""

    # --- data lifecycle ----------------------------------------------------
    retention: str = "forever"
    """How long invocations are kept: a duration such as ``30d``, ``12h``, ``90m`` or ``3600s``
    (or ``forever``, the default). Applied as the Cassandra TTL of every row of every table
    (they expire at once, ``retention`` after their create time) and by the memory store. Rows
    written before a change keep the TTL they were written with (docs/privacy.md)."""
    list_page_token_secrets: Annotated[list[SecretStr], NoDecode] = []
    """Secrets (comma-separated, each at least 16 characters) that sign ListInvocations page
    tokens: the first signs, every one verifies (to rotate: put the new one first, drop the old
    one after ``list_page_token_lifetime_s``). Every replica needs the same ones. Empty: a
    random secret per process (a token is then only valid on the process that made it)."""
    list_page_token_lifetime_s: float = Field(86400.0, gt=0)
    """How long a page token stays valid (24 hours)."""
    cassandra_create_schema: bool = False
    """Create (or upgrade) the keyspace and table at start-up, as ``migrate`` does; the local dev
    stack turns it on. Off (the default), ``serve`` only checks that the schema is in place
    and refuses to start if ``inference-service migrate`` has not run: one process owns the
    schema, and servers that start together never race to create it."""

    # --- reliability -------------------------------------------------------
    claim_lease_s: float = Field(60.0, gt=0)
    """How long an Invoke owns an id it claimed before a retry of the same id and content may
    take the claim over (its owner presumably died), measured on the store's clock, never by
    comparing servers' clocks (docs/architecture.md, "The claim protocol"). Longer than the
    slowest model run plus the store's retry budget."""
    speculative_model_run: bool = True
    """Run the model while the claim of the id is in flight, instead of after it: a lone Invoke
    answers about one claim round trip sooner. An Invoke that loses the claim (a retry, or a
    concurrent Invoke of the same id) discards its run and answers with the stored outcome, so
    exactly one result is stored and every caller gets that one; its run is wasted CPU. Turn it
    off where clients replay ids often."""
    pending_wait_s: float = Field(5.0, ge=0)
    """How long an Invoke of an id whose first Invoke is still running waits for its outcome
    before answering UNAVAILABLE (retry)."""
    store_check_interval_s: float = Field(1.0, gt=0)
    """How often the server checks that its store answers (for gRPC health)."""
    store_unhealthy_after_s: float = Field(3.0, ge=0)
    """Health turns NOT_SERVING once the store has failed every check for this long (counted
    from the start of the first failing check), and SERVING again at the first check that
    passes. Any error fails a check, and so does no answer within this long (or, with 0, within
    ``store_check_interval_s``): a hanging store counts as down."""
    shutdown_drain_delay_s: float = Field(3.0, ge=0)
    """On SIGTERM, how long the server keeps serving while health says NOT_SERVING, so that
    Envoy (health checked every second) stops sending before the server stops taking calls."""

    cache_max_bytes: int = Field(64 * 1024 * 1024, ge=0)
    """Bytes of finished invocations (content included) each server process keeps in memory to
    answer GetInvocation without a store read (they never change); 0 turns the cache off."""

    # --- observability -----------------------------------------------------
    log_level: str = "INFO"
    """Root log level."""
    log_format: Literal["text", "json"] = "text"
    """``text`` (one readable line per record) or ``json`` (one JSON object per line, with the
    line's fields as keys). Either way every call is logged once (logger
    ``inference_service.grpc.request_id``): request id, method, status, latency, invocation id."""
    log_flush_interval_s: float = Field(0.0, ge=0.0, le=10.0)
    """0 (the default): each log line is written to stderr at once. More: lines below WARNING
    (the line of each call) are written in batches, at most this many seconds after they were
    logged; WARNING and worse at once, with every line before them, and everything at exit. On
    a loaded machine a write per line cost the event loop about 0.09 ms per call (on a quieter
    one, no measurable amount: docs/performance.md). A process killed outright (SIGKILL, out of
    memory) loses the lines of its last interval."""
    metrics_enabled: bool = True
    """Serve Prometheus metrics at ``http://<metrics_host>:<metrics_port>/metrics``."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds to: loopback by default, so only this host can
    scrape it. For a Prometheus on another host (or outside the container), set ``0.0.0.0``
    or an address of this host, deliberately: the endpoint has no authentication."""
    metrics_port: int = Field(9464, ge=0, le=65535)
    """Port of the metrics endpoint; 0 picks a free one (logged at start-up)."""
    otlp_endpoint: str | None = None
    """OpenTelemetry tracing (off when unset): spans of every call and stage are exported with
    OTLP/gRPC to this collector, e.g. ``http://127.0.0.1:4317``."""
    render_max_dimension: int = Field(2048, ge=16)
    """Longest side, in pixels, of an image drawn by RenderInvocation (larger ones are scaled
    down; the PNG is also kept under ``max_content_bytes``)."""

    @field_validator("cassandra_contact_points", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        return split_list(value)

    @field_validator("list_page_token_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("list_page_token_secrets")
    @classmethod
    def _long_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(secret.get_secret_value().encode()) < 16 for secret in value):
            raise ValueError("each page token secret must be at least 16 characters")
        return value

    @field_validator("retention")
    @classmethod
    def _check_retention(cls, value: str) -> str:
        parse_duration_s(value)
        return value

    @property
    def retention_s(self) -> int:
        """``retention`` in seconds; 0: forever."""
        return parse_duration_s(self.retention)

    @model_validator(mode="after")
    def _one_retention(self) -> Settings:
        retention = self.retention_s
        if retention and self.cassandra_default_ttl_s and retention != self.cassandra_default_ttl_s:
            raise ValueError(
                f"retention ({self.retention}) and cassandra_default_ttl_s "
                f"({self.cassandra_default_ttl_s}) disagree: set retention only"
            )
        if retention:
            self.cassandra_default_ttl_s = retention
        return self

    @field_validator("cassandra_datacenters", mode="before")
    @classmethod
    def _split_datacenters(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("{"):
                return json.loads(value)
            pairs = [item.split(":", 1) for item in value.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected DC:RF pairs separated by commas, e.g. dc1:3,dc2:3")
            return {dc.strip(): int(rf) for dc, rf in pairs}
        return value

    @model_validator(mode="after")
    def _budget_holds_the_largest_image(self) -> Settings:
        if self.max_decoded_bytes > self.image_memory_budget_bytes:
            raise ValueError(
                f"max_decoded_bytes ({self.max_decoded_bytes}) is over image_memory_budget_bytes "
                f"({self.image_memory_budget_bytes}): an image that large could never be decoded"
            )
        return self

    def resolved_shared_dir(self) -> Path:
        return self.shared_dir.expanduser().resolve()
