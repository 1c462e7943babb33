"""``inference-client``: invoke the service on files and folders; read, render, list and delete
invocations.

Built on ``inference_client.Client``. Talks native gRPC to ``--target`` (Envoy's listener by
default, ``INFERENCE_TARGET``), over TLS with ``--ca-file`` (or ``--tls``), with a bearer token
(``--token``, ``INFERENCE_TOKEN``) when the listener checks JWTs. Progress goes to stderr,
results to stdout; the exit status is 1 when any input failed (their reasons are listed), 2 for
usage errors (a bad option, a missing file).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf import json_format
from inference.v1 import inference_service_pb2 as pb
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from inference_client.batch import RETRY_BUDGET_S, Outcome, invoke_all
from inference_client.client import DEFAULT_TARGET, Client
from inference_client.files import find_images

app = typer.Typer(
    name="inference-client",
    help="Client of inference.v1.InferenceService (native gRPC, through Envoy by default).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)

Target = Annotated[
    str,
    typer.Option(
        "--target",
        envvar="INFERENCE_TARGET",
        help="host:port of Envoy's listener (or of a server).",
    ),
]
Timeout = Annotated[float, typer.Option(help="Deadline of each call, in seconds.", min=0.1)]
CaFile = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar="INFERENCE_CA_FILE",
        help="PEM file of the CA that signed the listener's certificate: connect with TLS.",
        dir_okay=False,
    ),
]
Tls = Annotated[
    bool,
    typer.Option(
        "--tls", envvar="INFERENCE_TLS", help="Connect with TLS, trusting the system's CAs."
    ),
]
Token = Annotated[
    str,
    typer.Option(
        "--token",
        envvar="INFERENCE_TOKEN",
        help="Bearer token (JWT) sent with every call, for a listener that checks them.",
        show_default=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _version(value: bool) -> None:
    if value:
        out.print(f"inference-client {importlib.metadata.version('inference-client')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Client of inference.v1.InferenceService (native gRPC, through Envoy by default)."""


@contextmanager
def _client(
    target: str, ca_file: Path | None, tls: bool, token: str, timeout: float
) -> Iterator[Client]:
    """The library's client; a CA file that cannot be read is a usage error (exit 2)."""
    try:
        client = Client(target, ca_file=ca_file, tls=tls, token=token or None, timeout=timeout)
    except OSError as exc:
        err.print(f"[red]error[/red]: cannot read --ca-file {ca_file}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    with client:
        yield client


class RateColumn(ProgressColumn):
    """Files per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} files/s" if speed else "- files/s", style="progress.data.speed")


def _fail(error: grpc.RpcError) -> typer.Exit:
    """One line naming the status and the server's message; exit status 1."""
    err.print(f"[red]error[/red]: {error.code().name}: {error.details()}", highlight=False)
    return typer.Exit(1)


def _state_text(outcome: Outcome) -> Text:
    if outcome.error and not outcome.state:
        return Text(outcome.error.split(":", 1)[0], style="red")
    label = outcome.state + (" (stored)" if outcome.resumed else "")
    return Text(label, style="green" if outcome.ok else "red")


def summary_table(outcomes: list[Outcome]) -> Table:
    table = Table(title=None, show_lines=False)
    table.add_column("file", overflow="fold")
    table.add_column("id", no_wrap=True)  # ids are copied and pasted whole
    table.add_column("faces", justify="right")
    table.add_column("state")
    for outcome in outcomes:
        faces = "" if outcome.faces is None else str(outcome.faces)
        table.add_row(str(outcome.file.path), outcome.id, faces, _state_text(outcome))
    return table


@app.command()
def invoke(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Image files, and folders searched recursively for images."),
    ],
    target: Target = DEFAULT_TARGET,
    ca_file: CaFile = None,
    tls: Tls = False,
    token: Token = "",
    model: Annotated[
        str, typer.Option(help="The model to run (`list-models`); the default model if empty.")
    ] = "",
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object a line per file instead of the table."),
    ] = False,
    concurrency: Annotated[int, typer.Option(help="Files in flight at once.", min=1)] = 4,
    id_prefix: Annotated[
        str, typer.Option(help="Put before every id derived from a file's relative path.")
    ] = "",
    timeout: Timeout = 60.0,
    retry_for: Annotated[
        float,
        typer.Option(
            help="Retry a file's UNAVAILABLE or DEADLINE_EXCEEDED for this long, in seconds "
            "(keep it above the server's claim lease, 60 s by default).",
            min=0,
        ),
    ] = RETRY_BUDGET_S,
) -> None:
    """Invoke the model on every image; running it again resumes (stored inputs are not sent
    again). Ids: the file's path relative to the current folder, '/' written as '~'."""
    try:
        files = list(find_images(paths))
    except FileNotFoundError as exc:
        err.print(f"[red]error[/red]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    if not files:
        err.print("no image files found")
        raise typer.Exit(1)

    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
    )

    async def run(client: Client) -> list[Outcome]:
        async with client.aio_channel() as channel:
            with progress:
                task = progress.add_task("invoking", total=len(files))
                return await invoke_all(
                    channel,
                    files,
                    id_prefix=id_prefix,
                    concurrency=concurrency,
                    deadline_s=timeout,
                    retry_budget_s=retry_for,
                    model=model,
                    metadata=client.metadata,
                    on_done=lambda _: progress.advance(task),
                )

    with _client(target, ca_file, tls, token, timeout) as client:
        outcomes = asyncio.run(run(client))
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if as_json:
        for outcome in outcomes:
            document = {
                "file": str(outcome.file.path),
                "id": outcome.id,
                "state": outcome.state,
                "faces": outcome.faces,
                "resumed": outcome.resumed,
                "error": outcome.error,
            }
            sys.stdout.write(json.dumps(document) + "\n")
        if failed:
            raise typer.Exit(1)
        return
    out.print(summary_table(outcomes))
    resumed = sum(outcome.resumed for outcome in outcomes)
    faces = sum(outcome.faces or 0 for outcome in outcomes)
    out.print(
        f"{len(outcomes)} files: {len(outcomes) - len(failed)} succeeded "
        f"({resumed} already stored), {len(failed)} failed; {faces} faces",
        highlight=False,
    )
    if failed:
        out.print("failed:", style="red")
        for outcome in failed:
            out.print(f"  {outcome.file.path} ({outcome.id}): {outcome.error}", highlight=False)
        raise typer.Exit(1)


@app.command()
def get(
    invocation_id: Annotated[str, typer.Argument(metavar="ID", help="The input id.")],
    target: Target = DEFAULT_TARGET,
    ca_file: CaFile = None,
    tls: Tls = False,
    token: Token = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the API's JSON (as REST returns it).")
    ] = False,
    full: Annotated[bool, typer.Option(help="Include the content bytes (base64 in JSON).")] = False,
    timeout: Timeout = 30.0,
) -> None:
    """Show a stored invocation: a table, or the API's JSON."""
    with _client(target, ca_file, tls, token, timeout) as client:
        try:
            invocation = client.get(invocation_id, full=full)
        except grpc.RpcError as error:
            raise _fail(error) from None
    if as_json:
        document = json_format.MessageToDict(
            pb.GetInvocationResponse(invocation=invocation),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
        return
    fields = Table(show_header=False, box=None)
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("id", invocation.id)
    fields.add_row("state", pb.Invocation.State.Name(invocation.state).removeprefix("STATE_"))
    fields.add_row("model", f"{invocation.model} {invocation.model_version[:12]}")
    fields.add_row("image", f"{invocation.output.image_width} x {invocation.output.image_height}")
    fields.add_row("created", invocation.create_time.ToJsonString())
    if invocation.HasField("complete_time"):
        fields.add_row("completed", invocation.complete_time.ToJsonString())
    fields.add_row("sha256", invocation.content_sha256)
    for key in sorted(invocation.input.metadata):
        fields.add_row(f"metadata.{key}", invocation.input.metadata[key])
    if invocation.error:
        fields.add_row("error", invocation.error)
    fields.add_row("faces", str(len(invocation.output.detections)))
    out.print(fields)
    if invocation.output.detections:
        boxes = Table("#", "score", "x_min", "y_min", "x_max", "y_max", "label")
        for index, detection in enumerate(invocation.output.detections, 1):
            box = detection.box
            boxes.add_row(
                str(index),
                f"{detection.score:.3f}",
                *(f"{value:.1f}" for value in (box.x_min, box.y_min, box.x_max, box.y_max)),
                detection.label,
            )
        out.print(boxes)


@app.command()
def render(
    invocation_id: Annotated[str, typer.Argument(metavar="ID", help="The input id.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG file to write.")],
    target: Target = DEFAULT_TARGET,
    ca_file: CaFile = None,
    tls: Tls = False,
    token: Token = "",
    timeout: Timeout = 60.0,
) -> None:
    """Write the stored image with its boxes and scores drawn, as a PNG."""
    if not output.parent.is_dir():
        err.print(f"[red]error[/red]: cannot write {output}: no folder {output.parent}")
        raise typer.Exit(2)
    with _client(target, ca_file, tls, token, timeout) as client:
        try:
            data = client.render(invocation_id)
        except grpc.RpcError as error:
            raise _fail(error) from None
    try:
        output.write_bytes(data)
    except OSError as exc:
        err.print(f"[red]error[/red]: cannot write {output}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    err.print(f"wrote {output} (image/png, {len(data)} bytes)", highlight=False)


@app.command("list-models")
def list_models(
    target: Target = DEFAULT_TARGET,
    ca_file: CaFile = None,
    tls: Tls = False,
    token: Token = "",
    as_json: AsJson = False,
    timeout: Timeout = 30.0,
) -> None:
    """The models the service serves (the names `invoke --model` takes), the default first."""
    with _client(target, ca_file, tls, token, timeout) as client:
        try:
            models = client.list_models()
        except grpc.RpcError as error:
            raise _fail(error) from None
    if as_json:
        for model in models:
            document = json_format.MessageToDict(model, preserving_proto_field_name=True)
            sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
        return
    table = Table("name", "version", "runtime", "default", "ready")
    for model in models:
        table.add_row(
            model.name,
            model.version[:12],
            model.runtime,
            "yes" if model.is_default else "",
            "yes" if model.ready else "no",
        )
    out.print(table)


def _state_name(invocation: pb.Invocation) -> str:
    return pb.Invocation.State.Name(invocation.state).removeprefix("STATE_")


def _invocation_json(invocation: pb.Invocation) -> str:
    document = json_format.MessageToDict(
        invocation, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(document, separators=(",", ":"))


def listing_table(invocations: list[pb.Invocation]) -> Table:
    table = Table()
    # Ids and times are never cut (ids are copied and pasted whole); the rest wraps.
    longest_id = max((len(invocation.id) for invocation in invocations), default=2)
    table.add_column("id", no_wrap=True, min_width=longest_id)
    table.add_column("created", no_wrap=True, min_width=len("2026-01-01T00:00:00.000Z"))
    table.add_column("state", overflow="fold")
    table.add_column("model", overflow="fold")
    table.add_column("faces", justify="right")
    table.add_column("metadata", overflow="fold")
    for invocation in invocations:
        state = _state_name(invocation)
        metadata = invocation.input.metadata
        table.add_row(
            invocation.id,
            invocation.create_time.ToJsonString(),
            Text(state, style={"SUCCEEDED": "green", "FAILED": "red"}.get(state, "")),
            invocation.model,
            str(len(invocation.output.detections)) if state == "SUCCEEDED" else "",
            " ".join(f"{key}={metadata[key]}" for key in sorted(metadata)),
        )
    return table


@app.command("list")
def list_invocations(
    target: Target = DEFAULT_TARGET,
    ca_file: CaFile = None,
    tls: Tls = False,
    token: Token = "",
    filter_text: Annotated[
        str,
        typer.Option(
            "--filter",
            help='Which invocations, terms joined by AND: create_time >= "<RFC 3339>", '
            'create_time < "...", model = "...", state = SUCCEEDED|FAILED|PENDING, '
            'metadata.<key> = "<value>".',
        ),
    ] = "",
    page_size: Annotated[
        int,
        typer.Option(
            help="Invocations per call: 0 is the server's default (50); at most 1000.", min=0
        ),
    ] = 0,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object a line (the API's Invocation), page by page."),
    ] = False,
    timeout: Timeout = 30.0,
) -> None:
    """List the stored invocations, newest first, following every page (BASIC view: no
    content). A page that fails with UNAVAILABLE is asked for again."""
    count = 0
    rows: list[pb.Invocation] = []
    with _client(target, ca_file, tls, token, timeout) as client:
        try:
            for page in client.list_pages(filter=filter_text, page_size=page_size):
                count += len(page.invocations)
                if as_json:
                    for invocation in page.invocations:
                        sys.stdout.write(_invocation_json(invocation) + "\n")
                    sys.stdout.flush()
                else:
                    rows.extend(page.invocations)
        except grpc.RpcError as error:
            err.print(f"(stopped after {count} invocations)", highlight=False)
            raise _fail(error) from None
    if as_json:
        return
    if rows:
        out.print(listing_table(rows))
    out.print(f"{count} invocations", highlight=False)


@app.command()
def delete(
    ids: Annotated[
        list[str], typer.Argument(metavar="ID...", help="The ids of the invocations to erase.")
    ],
    target: Target = DEFAULT_TARGET,
    ca_file: CaFile = None,
    tls: Tls = False,
    token: Token = "",
    allow_missing: Annotated[
        bool, typer.Option(help="An id with no invocation is not an error.")
    ] = False,
    timeout: Timeout = 30.0,
) -> None:
    """Erase invocations (input, content and result) by id. Exit status 1 when any delete
    failed (each failure is listed)."""
    failed = 0
    with _client(target, ca_file, tls, token, timeout) as client:
        for deletion in client.delete_many(ids, allow_missing=allow_missing):
            if deletion.ok:
                out.print(f"deleted {deletion.id}", highlight=False)
            else:
                failed += 1
                err.print(f"[red]failed[/red] {deletion.id}: {deletion.error}", highlight=False)
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
