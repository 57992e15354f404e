"""authz-server: external authorization for AI-agent traffic to MCP servers."""

__version__ = "0.1.0"
