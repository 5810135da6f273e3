from x0tta6bl4.mcp_server.server import main

main()
