"""Bootstrap: the one place that builds every component from ``Settings`` and wires them.

Tests pass their own store, detector or model registry in; everything else comes from settings.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import secrets
from collections.abc import Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_service.admission import AdmissionController
from inference_service.errors import StartupError
from inference_service.grpc.errors import ErrorMappingInterceptor
from inference_service.grpc.handler_cache import CachedHandlers
from inference_service.grpc.metrics import MetricsInterceptor
from inference_service.grpc.request_id import RequestIdInterceptor
from inference_service.grpc.servicer import InferenceServicer
from inference_service.grpc.single_message import SingleMessageInterceptor
from inference_service.health import StoreHealthMonitor
from inference_service.images.decoder import PillowImageDecoder
from inference_service.limits import RequestLimits
from inference_service.listing import PageTokens
from inference_service.metrics import (
    CacheObserver,
    InstrumentedDetector,
    InstrumentedStore,
    Metrics,
    timed_decode,
)
from inference_service.models.config import load_models_config
from inference_service.models.loader import LoadOptions, load_model, load_models
from inference_service.models.registry import LoadedModel, LoadedModelRegistry
from inference_service.ports import Detector, InvocationStore
from inference_service.render import InvocationRenderer
from inference_service.service import InferenceService
from inference_service.settings import Settings
from inference_service.stores.cache import CachingInvocationStore
from inference_service.stores.memory import InMemoryInvocationStore
from inference_service.tracing import ContextExecutor, tracer_provider_from

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES = 128 * 1024
"""The request metadata (headers) a server takes: twice Envoy's limit (60 KiB)."""

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name


def build_models(settings: Settings) -> LoadedModelRegistry:
    """Load every configured model (``models_file``, else the built-in ones). Blocking; all or
    nothing: raises ``ModelConfigError`` or ``ModelLoadError`` with a message naming the model."""
    config = load_models_config(settings)
    loaded = load_models(config, LoadOptions.from_settings(settings))
    return LoadedModelRegistry(loaded, default=config.default_name)


def build_detector(settings: Settings) -> Detector:
    """The configured default model's detector alone, loaded and warmed up (the benchmarks'
    ceiling). Blocking."""
    config = load_models_config(settings)
    (spec,) = [spec for spec in config.models if spec.name == config.default_name]
    return load_model(spec, LoadOptions.from_settings(settings)).detector


async def build_store(settings: Settings, metrics: Metrics | None = None) -> InvocationStore:
    """The configured store, connected (and its schema created when asked); with ``metrics``,
    timed (behind the cache) and its cache's hits and misses counted."""
    metrics = metrics or Metrics()
    if settings.store == "memory":
        return InstrumentedStore(InMemoryInvocationStore(ttl_s=settings.retention_s), metrics)
    from inference_service.stores.cassandra import CassandraInvocationStore

    store: InvocationStore = InstrumentedStore(
        await CassandraInvocationStore.from_settings(settings), metrics
    )
    if settings.cache_max_bytes > 0:
        cache = CachingInvocationStore(
            store, max_bytes=settings.cache_max_bytes, ttl_s=settings.cassandra_default_ttl_s
        )
        store = CacheObserver(cache, metrics)
    return store


def build_page_tokens(settings: Settings) -> PageTokens:
    """The signer of ListInvocations page tokens: the configured secrets, or a random one of
    this process (with a warning: tokens then work on this process only)."""
    configured = [secret.get_secret_value().encode() for secret in settings.list_page_token_secrets]
    if not configured:
        logger.warning(
            "INFERENCE_LIST_PAGE_TOKEN_SECRETS is not set: ListInvocations page tokens are "
            "signed with a random secret of this process, and another replica refuses them"
        )
        configured = [secrets.token_bytes(32)]
    return PageTokens(
        secrets=configured,
        lifetime=dt.timedelta(seconds=settings.list_page_token_lifetime_s),
    )


def freeze_startup_objects() -> None:
    """Collect, then move every object alive now (the models' runtimes, TensorFlow's and
    grpc's modules, the store's driver: hundreds of thousands of objects that live as long as
    the process) out of the cyclic collector's reach (``gc.freeze``).

    Otherwise each full collection walks them all: 40-50 ms with the event loop stopped, every
    call in flight delayed by as much (docs/performance.md, "Round four: where a lone Invoke's
    time goes, and the open-loop tail"). Frozen objects are still freed by reference counting;
    only cycles among them wait for ``gc.unfreeze`` (``Application.stop``, and a reload, which
    freezes again once the retired model versions are closed). Process-wide, as the collector
    is."""
    gc.collect()
    gc.freeze()


class Application:
    """The running server: detector, store, service, gRPC server, health and reflection."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: InvocationStore | None = None,
        detector: Detector | None = None,
        tracer_provider: TracerProvider | None = None,
        models: LoadedModelRegistry | None = None,
    ) -> None:
        self.settings = settings
        self._tracer_provider = tracer_provider
        self._store = store
        if models is None and detector is not None:
            models = LoadedModelRegistry.single(detector)
        self._models = models
        self._reload_lock = asyncio.Lock()
        self._executor: Executor | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._service: InferenceService | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.metrics = Metrics()
        """This server's Prometheus metrics (``cli serve`` serves them on ``/metrics``)."""

    async def start(self) -> None:
        """Build every component from the settings and serve, in this order: the worker pool
        (and tracing), the models, the store, the service, the gRPC server; then health says
        SERVING and the store's health monitor starts."""
        tracing = self._start_workers_and_tracing()
        models = await self._load_models()
        store = await self._connect_store(models)
        limits = RequestLimits.from_settings(self.settings)
        decoder = PillowImageDecoder(
            max_pixels=self.settings.max_image_pixels,
            max_decoded_bytes=self.settings.max_decoded_bytes,
        )
        admission = self._build_admission(decoder)
        self._service = service = self._build_service(store, models, limits, decoder, admission)
        server = self._build_grpc_server(tracing, limits)
        self._add_services(server, service, limits, decoder, admission)
        await self._serve(server)
        self._start_store_monitor(store)
        freeze_startup_objects()
        logger.info("serving %s on %s:%d", SERVICE_NAME, self.settings.host, self.port)

    def _start_workers_and_tracing(self) -> list[grpc.aio.ServerInterceptor]:
        """The worker pool of decoding and model runs, and tracing when it is configured (then
        the pool carries each call's trace context); returns the tracing interceptors."""
        self._executor = ThreadPoolExecutor(
            max_workers=self.settings.workers, thread_name_prefix="inference"
        )
        if self._tracer_provider is None:
            self._tracer_provider = tracer_provider_from(self.settings.otlp_endpoint)
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if self._tracer_provider is not None:
            from opentelemetry.instrumentation.grpc import aio_server_interceptor

            interceptors.append(aio_server_interceptor(tracer_provider=self._tracer_provider))
            self.metrics.tracer = self._tracer_provider.get_tracer(__name__)
            self._executor = ContextExecutor(self._executor)  # spans of decode and model
        return interceptors

    async def _load_models(self) -> LoadedModelRegistry:
        """The configured models (unless given), loaded in a worker thread, timed, and
        logged."""
        if self._models is None:
            loop = asyncio.get_running_loop()
            self._models = await loop.run_in_executor(None, build_models, self.settings)
        models = self._models
        self._instrument(models.loaded().values())
        for model in models.list():
            logger.info(
                "model %s version %s (%s)%s ready",
                model.info.name,
                model.info.version,
                model.runtime,
                " (default)" if model.is_default else "",
            )
        return models

    async def _connect_store(self, models: LoadedModelRegistry) -> InvocationStore:
        """The configured store, connected (unless given), timed; the models are closed when it
        cannot be built."""
        if self._store is None:
            try:
                self._store = await build_store(self.settings, self.metrics)
            except BaseException:
                models.close()
                raise
        else:
            self._store = InstrumentedStore(self._store, self.metrics)
        return self._store

    def _build_admission(self, decoder: PillowImageDecoder) -> AdmissionController:
        """The work queue and the image memory budget, watched by the metrics."""
        settings = self.settings
        admission = AdmissionController(
            estimate=decoder.decoded_bytes,
            executor=cast(Executor, self._executor),  # made by start() first
            memory_budget_bytes=settings.image_memory_budget_bytes,
            max_admitted=settings.workers + settings.work_queue_size,
            wait_s=settings.admission_wait_s,
        )
        self.metrics.watch_admission(admission)
        return admission

    def _build_service(
        self,
        store: InvocationStore,
        models: LoadedModelRegistry,
        limits: RequestLimits,
        decoder: PillowImageDecoder,
        admission: AdmissionController,
    ) -> InferenceService:
        """The service layer over the store and the models."""
        settings = self.settings
        return InferenceService(
            store=store,
            models=models,
            decode=timed_decode(self.metrics, decoder.decode),
            executor=cast(Executor, self._executor),  # made by start() first
            admission=admission,
            limits=limits,
            pending_wait_s=settings.pending_wait_s,
            claim_lease_s=settings.claim_lease_s,
            speculative_model_run=settings.speculative_model_run,
            page_tokens=build_page_tokens(settings),
        )

    def _build_grpc_server(
        self, tracing: list[grpc.aio.ServerInterceptor], limits: RequestLimits
    ) -> grpc.aio.Server:
        """The gRPC server (no services yet): its interceptors, in order, and its limits."""
        # Derived from the content and metadata limits, as Envoy's REST limits are.
        max_message = limits.grpc_message_bytes
        # One request message per unary call, first of all (the outermost): the others still
        # see unary handlers (grpc/single_message.py). Then the request id: the lines of the
        # others carry it too. Ours wrap each method's handler once, not per call
        # (grpc/handler_cache.py); tracing, which may look at a call's metadata, is not cached.
        single = SingleMessageInterceptor()
        inner = [
            RequestIdInterceptor(),
            MetricsInterceptor(self.metrics),
            ErrorMappingInterceptor(),
        ]
        interceptors: list[grpc.aio.ServerInterceptor] = (
            [CachedHandlers([single]), *tracing, CachedHandlers(inner)]
            if tracing
            else [CachedHandlers([single, *inner])]
        )
        return grpc.aio.server(
            interceptors=interceptors,
            maximum_concurrent_rpcs=self.settings.max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
                ("grpc.so_reuseport", 0),
                # No HPACK dynamic table for the headers the server receives (SETTINGS_HEADER_
                # TABLE_SIZE 0): grpc-core keeps a reserved header that failed to parse (e.g.
                # `grpc-timeout: abc`) in that table with its error, and fails every later
                # header of the connection that refers to its name (issue 18). Envoy sends all
                # clients' calls on one connection. The cost: headers from Envoy uncompressed,
                # a few hundred bytes a call on the internal network.
                ("grpc.http2.hpack_table_size.decoder", 0),
                # Request metadata up to 128 KiB, above Envoy's 60 KiB header limit: Envoy's
                # 431 is the answer to headers too large, never grpc-core's 8 KiB default
                # (RESOURCE_EXHAUSTED listing the header names and sizes, issue 18).
                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES),
            ],
        )

    def _add_services(
        self,
        server: grpc.aio.Server,
        service: InferenceService,
        limits: RequestLimits,
        decoder: PillowImageDecoder,
        admission: AdmissionController,
    ) -> None:
        """The inference service (with its renderer), health and reflection on ``server``."""
        renderer = InvocationRenderer(
            get_invocation=service.get_invocation,
            decode=decoder.decode,
            executor=cast(Executor, self._executor),  # made by start() first
            admission=admission,
            max_image_pixels=limits.max_image_pixels,
            max_dimension=self.settings.render_max_dimension,
            max_bytes=limits.max_content_bytes,
            metrics=self.metrics,
        )
        pb_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(service, renderer), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )

    async def _serve(self, server: grpc.aio.Server) -> None:
        """Bind the configured address, start serving, and say SERVING."""
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            self.port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises "Failed to bind" (older versions returned 0)
            self.port = 0
        if not self.port:
            raise StartupError(
                f"cannot bind the gRPC server to {address} (the port is in use, or the address "
                "is not one of this host): set INFERENCE_PORT (--port) or INFERENCE_HOST (--host)"
            )
        await server.start()
        self._server = server
        await self._set_serving(True)

    def _start_store_monitor(self, store: InvocationStore) -> None:
        """Health follows the store from now on (``StoreHealthMonitor``)."""
        monitor = StoreHealthMonitor(
            store,
            self._set_serving,
            interval_s=self.settings.store_check_interval_s,
            unhealthy_after_s=self.settings.store_unhealthy_after_s,
        )
        self._monitor_task = asyncio.create_task(monitor.run(), name="store-health")

    @property
    def models(self) -> LoadedModelRegistry | None:
        """The served models (``None`` before ``start``)."""
        return self._models

    async def reload(self) -> bool:
        """Load the model configuration again (``models_file``, re-read) and serve it: models
        whose configuration and artifact are unchanged go on as they are; new versions are
        loaded and warmed up beside the old ones, then swapped in at once. Calls in flight
        finish on the version they started with (each holds it until its unit of work ends),
        health stays SERVING throughout. All or nothing: if any model fails to load, the
        previous models go on serving and False is returned (the error is logged)."""
        if self._models is None:
            raise RuntimeError("the application is not started")
        registry = self._models
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            settings = self.settings

            def load() -> tuple[list[Any], str]:
                config = load_models_config(settings)
                loaded = load_models(
                    config, LoadOptions.from_settings(settings), current=registry.loaded()
                )
                return loaded, config.default_name

            try:
                loaded, default = await loop.run_in_executor(None, load)
            except Exception:
                logger.exception("reload failed: the models loaded before go on serving")
                return False
            self._instrument(loaded)
            retired = registry.replace(loaded, default=default)
            self.metrics.set_models(registry.list())
            # The retired versions were frozen with everything else: make them collectable,
            # then freeze the new ones too, unless a call still holds an old version (it closes
            # later; frozen now, its cycles would stay until the next reload or stop).
            gc.unfreeze()
            if all(model.closed for model in retired):
                freeze_startup_objects()
        for model in registry.list():
            logger.info(
                "reloaded: model %s version %s (%s)%s",
                model.info.name,
                model.info.version,
                model.runtime,
                " (default)" if model.is_default else "",
            )
        return True

    def _instrument(self, models: Iterable[LoadedModel]) -> None:
        """Time every model's runs as the ``model`` stage (each loaded version once); the
        model info metric names every served model."""
        for model in models:
            if not isinstance(model.detector, InstrumentedDetector):
                model.detector = InstrumentedDetector(model.detector, self.metrics)
        if self._models is not None:
            self.metrics.set_models(self._models.list())

    async def _set_serving(self, serving: bool) -> None:
        """Health of the whole server and of the service: SERVING only while the store
        answers (Envoy's health checks then route around a replica that lost its store)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)

    async def stop(self, grace: float | None = None, *, drain: bool = False) -> None:
        """Stop taking calls, let in-flight ones finish (up to ``grace`` s), release all.

        With ``drain`` (SIGTERM), health says NOT_SERVING first and the server keeps serving
        for ``shutdown_drain_delay_s``, until the load balancer has stopped sending calls.
        """
        if grace is None:
            grace = self.settings.shutdown_grace_s
        if self._monitor_task is not None:
            self._monitor_task.cancel()
            await asyncio.gather(self._monitor_task, return_exceptions=True)
            self._monitor_task = None
        await self._health.enter_graceful_shutdown()
        if drain and self._server is not None and self.settings.shutdown_drain_delay_s > 0:
            logger.info(
                "health NOT_SERVING; serving %.1fs more while the load balancer drains",
                self.settings.shutdown_drain_delay_s,
            )
            await asyncio.sleep(self.settings.shutdown_drain_delay_s)
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        if self._service is not None:
            await self._service.wait_idle()  # outcomes of calls cancelled by the stop
        if self._store is not None:
            await self._store.close()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True)
        if self._models is not None:
            self._models.close()
        if self._tracer_provider is not None:
            self._tracer_provider.force_flush()
        gc.unfreeze()  # what start froze is collectable again (tests start many applications)
        logger.info("stopped")
