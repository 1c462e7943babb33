"""The ``inference-service`` command: ``serve``, ``migrate``, ``backfill-index``, ``purge``
and ``export-savedmodel``.

The server's only reader of the environment (through ``Settings``) and the only place that
configures logging. (The client CLI, ``clients/python``, is another program: it reads
``INFERENCE_TARGET``.)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from inference_service.errors import StartupError
from inference_service.logs import configure_logging
from inference_service.settings import Settings

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inference-service",
        description="Face-detection inference service (gRPC; REST/JSON through Envoy). "
        "Every setting is also read from INFERENCE_<NAME> environment variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server until SIGTERM/SIGINT")
    serve.add_argument("--host", help="bind address (INFERENCE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port (INFERENCE_PORT, default 50051)")
    serve.add_argument(
        "--store", choices=("cassandra", "memory"), help="invocation store (INFERENCE_STORE)"
    )
    serve.add_argument("--workers", type=int, help="images processed at once (INFERENCE_WORKERS)")
    serve.add_argument(
        "--models-file", type=Path, help="model configuration (INFERENCE_MODELS_FILE)"
    )
    serve.add_argument(
        "--model-path", type=Path, help="default model's TFLite file (INFERENCE_MODEL_PATH)"
    )
    serve.add_argument("--shared-dir", type=Path, help="shared data folder (INFERENCE_SHARED_DIR)")
    serve.add_argument("--log-level", help="log level (INFERENCE_LOG_LEVEL, default INFO)")
    serve.add_argument(
        "--log-format", choices=("text", "json"), help="log lines (INFERENCE_LOG_FORMAT)"
    )
    serve.add_argument(
        "--metrics-port", type=int, help="/metrics port (INFERENCE_METRICS_PORT, default 9464)"
    )
    serve.add_argument(
        "--metrics-host",
        help="/metrics bind address (INFERENCE_METRICS_HOST, default 127.0.0.1: this host only)",
    )

    migrate = commands.add_parser(
        "migrate",
        help="create or upgrade the Cassandra keyspace and table (idempotent), then exit",
    )
    migrate.add_argument("--log-level", help="log level (INFERENCE_LOG_LEVEL, default INFO)")

    backfill = commands.add_parser(
        "backfill-index",
        help="write the list index entries of invocations stored before the index existed "
        "(resumable: goes on after the last page done), then exit",
    )
    backfill.add_argument(
        "--restart", action="store_true", help="start from the first row, not where it stopped"
    )
    backfill.add_argument("--log-level", help="log level (INFERENCE_LOG_LEVEL, default INFO)")

    purge = commands.add_parser(
        "purge",
        help="make erasures physical on one Cassandra node with nodetool: flush, compact the "
        "tables and the Paxos state, clear snapshots, drain (then restart the node); run it on "
        "every node, one at a time (docs/privacy.md)",
    )
    purge.add_argument(
        "--nodetool",
        default="nodetool",
        help='the nodetool command for the node, e.g. "nodetool -h 10.0.0.5 -p 7199"',
    )
    purge.add_argument(
        "--truncate-hints",
        action="store_true",
        help="also drop the node's hints (only after a repair has delivered them)",
    )
    purge.add_argument(
        "--no-drain",
        dest="drain",
        action="store_false",
        help="leave out nodetool drain (the node keeps running; the commit log copy is gone "
        "only once its segment is full and released)",
    )
    purge.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    purge.add_argument("--log-level", help="log level (INFERENCE_LOG_LEVEL, default INFO)")

    export = commands.add_parser(
        "export-savedmodel",
        help="build RFB-320 in Keras, restore the upstream TF checkpoint, write a SavedModel",
    )
    export.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        help="checkpoint folder (with variables.index) or prefix, e.g. "
        "../shared/models/tf-checkpoint/RFB-320",
    )
    export.add_argument("--out", type=Path, required=True, help="SavedModel folder to create")
    export.add_argument("--archive", type=Path, help="also pack it into this .zip, .tar.gz or .tgz")
    export.add_argument("--log-level", help="log level (default INFO)")
    return parser


_COMMAND_ONLY = {"command", "restart", "nodetool", "truncate_hints", "drain", "dry_run"}


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: value
        for name, value in vars(args).items()
        if name not in _COMMAND_ONLY and value is not None
    }
    return Settings(**overrides)


def _configure_logging(level: str, log_format: str = "text", flush_interval_s: float = 0.0) -> None:
    # TensorFlow warns at every tf.lite.Interpreter that it moves to ai-edge-litert; the
    # interpreter is what this version of the service runs, so say it once, not per worker.
    warnings.filterwarnings(
        "once", message=r"\s*Warning: tf.lite.Interpreter is deprecated", category=UserWarning
    )
    configure_logging(
        level, "json" if log_format == "json" else "text", flush_interval_s=flush_interval_s
    )


async def _serve(settings: Settings) -> None:
    from inference_service.app import Application

    app = Application(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        if app.models is None:
            logger.warning("SIGHUP ignored: the server is still loading its models")
            return
        logger.info("SIGHUP: reloading the models")
        task = asyncio.ensure_future(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    metrics_server = None
    if settings.metrics_enabled:
        # First: a port in use fails the start before the models load.
        from inference_service.metrics import start_metrics_endpoint

        address = f"{settings.metrics_host}:{settings.metrics_port}"
        try:
            metrics_server, _ = start_metrics_endpoint(
                app.metrics, settings.metrics_host, settings.metrics_port
            )
        except OSError as exc:
            raise StartupError(
                f"cannot serve metrics on {address} ({exc.strerror or exc}): set "
                "INFERENCE_METRICS_PORT (--metrics-port) to a free port, INFERENCE_METRICS_HOST "
                "(--metrics-host) to an address of this host, or INFERENCE_METRICS_ENABLED=false"
            ) from None
    try:
        await app.start()
        await stop.wait()
        logger.info("signal received: draining in-flight calls")
    finally:
        await app.stop(drain=stop.is_set())
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()


def _loop_factory(event_loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` runs on (``Settings.event_loop``); ``None``: asyncio's."""
    if event_loop == "uvloop":
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


async def _migrate(settings: Settings) -> None:
    from inference_service.stores.cassandra.maintenance import migrate

    await migrate(settings)


def _export_savedmodel(args: argparse.Namespace) -> None:
    from inference_service.export.keras_rfb import archive_folder, export_saved_model

    out = export_saved_model(args.checkpoint, args.out)
    print(out)
    if args.archive is not None:
        print(archive_folder(out, args.archive))


def _cannot_start(message: str) -> int:
    """The one line a failed start ends with (no traceback), and exit code 2."""
    print(f"inference-service: cannot start: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _setting_names(error: ValidationError) -> str:
    return ", ".join(
        "INFERENCE_" + "_".join(str(part) for part in item["loc"]).upper()
        for item in error.errors()
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "export-savedmodel":
        _configure_logging(args.log_level or "INFO")
        _export_savedmodel(args)
        return 0
    try:
        settings = _settings(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        return _cannot_start(f"invalid setting {_setting_names(exc)}: {first['msg']}")
    _configure_logging(settings.log_level, settings.log_format, settings.log_flush_interval_s)
    from inference_service.errors import StoreUnavailableError
    from inference_service.models.config import ModelConfigError
    from inference_service.models.loader import ModelLoadError
    from inference_service.models.source import ModelFetchError

    try:
        if args.command == "serve":
            with asyncio.Runner(loop_factory=_loop_factory(settings.event_loop)) as runner:
                runner.run(_serve(settings))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "backfill-index":
            from inference_service.stores.cassandra import maintenance

            asyncio.run(
                maintenance.backfill_index(
                    maintenance.settings_config(settings),
                    restart=args.restart,
                    report=maintenance.print_json,
                )
            )
        elif args.command == "purge":
            import shlex

            from inference_service.stores.cassandra import maintenance

            maintenance.purge(
                settings.cassandra_keyspace,
                shlex.split(args.nodetool),
                truncate_hints=args.truncate_hints,
                drain=args.drain,
                dry_run=args.dry_run,
                report=maintenance.print_json,
            )
    except StartupError as exc:
        return _cannot_start(str(exc))
    except (ModelConfigError, ModelLoadError, ModelFetchError) as exc:
        setting = (
            "INFERENCE_MODELS_FILE (--models-file)"
            if settings.models_file is not None
            else "INFERENCE_MODEL_PATH (--model-path) or INFERENCE_MODELS_FILE"
        )
        return _cannot_start(f"{exc}: check {setting}")
    except StoreUnavailableError:
        points = ",".join(settings.cassandra_contact_points)
        return _cannot_start(
            f"the Cassandra store at {points} (port {settings.cassandra_port}) cannot be "
            "reached: check INFERENCE_CASSANDRA_CONTACT_POINTS and INFERENCE_CASSANDRA_PORT "
            "(and the credentials), or set INFERENCE_STORE=memory"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
