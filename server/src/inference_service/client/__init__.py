"""``inference-client``: a command-line client of the service (native gRPC, through Envoy by
default). Not used by the server."""
