"""The Envoy ext_authz v3 adapter: CheckRequest in, CheckResponse out, no policy logic."""

from authz_server.envoy.adapter import request_from_check, response_from_decision

__all__ = ["request_from_check", "response_from_decision"]
