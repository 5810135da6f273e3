"""x0tta6bl4-mcp: the MCP server (stdio) of the operator's skill; see :mod:`x0tta6bl4.mcp_server.server`."""
