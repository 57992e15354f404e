"""Parse an Envoy bootstrap with the official Envoy protos (PyPI xds-protos).

Runs in the wire virtual environment, never in a process that imports authz_server (both register
the same proto names). Reads the bootstrap as JSON on stdin (the wire environment has no YAML
parser; the caller converts), parses it strictly into envoy.config.bootstrap.v3.Bootstrap and
prints the parsed message back as JSON (proto field names, enums as numbers, defaults included).
A field Envoy does not know, a value of the wrong type or an unresolvable "@type" makes it print
the error to stderr and exit 1.

Usage: python envoy_bootstrap_check.py < bootstrap.json
"""

from __future__ import annotations

import json
import sys

# The typed_config / typed_extension_protocol_options entries are google.protobuf.Any values; they
# resolve only when their message types are registered, which importing the modules does.
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from google.protobuf import json_format


def main() -> int:
    document = json.load(sys.stdin)
    bootstrap = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(document, bootstrap)
    except json_format.ParseError as exc:
        print(f"invalid bootstrap: {exc}", file=sys.stderr)
        return 1
    # Fields left at their default (false, 0) are printed too, so the caller can tell an explicit
    # `failure_mode_allow: false` from a misplaced one that never reached the message.
    parsed = json_format.MessageToDict(
        bootstrap,
        preserving_proto_field_name=True,
        use_integers_for_enums=True,
        always_print_fields_with_no_presence=True,
    )
    json.dump(parsed, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
