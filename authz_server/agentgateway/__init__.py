"""agentgateway's own hooks: the ExtMcp guardrail service (``ext_mcp``)."""
