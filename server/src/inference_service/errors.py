"""Domain errors.

Each error carries the gRPC status code it maps to, so that the one mapping
place (``inference_service.grpc.errors``) needs no table of its own and no
layer below the servicer imports grpc. The ``code`` is the *name* of a
``grpc.StatusCode`` member.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of every error a client may see; its message is client-safe."""

    code: str = "INTERNAL"


class InvalidArgumentError(InferenceError):
    """The request is malformed: bad id, empty or undecodable content, ..."""

    code = "INVALID_ARGUMENT"


class ContentTooLargeError(InferenceError):
    """The content is over the configured size limit."""

    code = "RESOURCE_EXHAUSTED"


class NotFoundError(InferenceError):
    """No invocation (or no model) has that name."""

    code = "NOT_FOUND"


class AlreadyExistsError(InferenceError):
    """The id is taken by an input with different content."""

    code = "ALREADY_EXISTS"


class StoreUnavailableError(InferenceError):
    """The invocation store cannot be reached or timed out."""

    code = "UNAVAILABLE"


class InvocationPendingError(InferenceError):
    """The id is claimed by an Invoke whose outcome is not stored yet; retrying may succeed."""

    code = "UNAVAILABLE"


class InvocationGoneError(InferenceError):
    """The invocation's row is gone (deleted, or expired) while this call held its claim: its
    outcome was not stored, and nothing was written. ``InvocationStore.complete`` raises it."""

    code = "ABORTED"


class ServerBusyError(InferenceError):
    """No room for this request now (memory budget or work queue full); retrying later may
    succeed. UNAVAILABLE (503 through Envoy), never RESOURCE_EXHAUSTED, which says "too large"."""

    code = "UNAVAILABLE"


class ModelNotReadyError(InferenceError):
    """The model is not loaded (yet)."""

    code = "UNAVAILABLE"


class ModelError(InferenceError):
    """The model failed on an input. The message is not shown to clients."""

    code = "INTERNAL"


class FailedPreconditionError(InferenceError):
    """The invocation is not in a state the call needs (e.g. no result to draw yet)."""

    code = "FAILED_PRECONDITION"


MAX_ECHO_BYTES = 100
"""The most bytes of a client's input that an error message repeats (an id, a metadata key or
value, a filter, a model name, a page token, ...). Envoy's own messages use the same cap."""
CUT_MARK = "...(cut)"
"""What follows a quote that was cut at ``MAX_ECHO_BYTES``."""


def quote(value: str | bytes) -> str:
    """``value`` quoted (``repr``) for an error message: at most ``MAX_ECHO_BYTES`` bytes of its
    UTF-8 (never half a character), followed by ``CUT_MARK`` when longer. The one way an error
    repeats client input, so that no message echoes a whole upload back."""
    data = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_ECHO_BYTES:
        return repr(value)
    head = data[:MAX_ECHO_BYTES]
    if isinstance(value, bytes):
        return repr(head) + CUT_MARK
    return repr(head.decode("utf-8", "ignore")) + CUT_MARK


class StartupError(RuntimeError):
    """A server (or command) cannot start: a port in use, an address not of this host, ...
    Never seen by a client; its message names the setting to change, and ``cli`` prints it as
    the one line a failed start ends with (exit code 2)."""
