"""RPC layer: operations registry, the single dispatch point, the socket server, client and CLI."""
