"""Local test servers (see protocol_server.py)."""
