"""The protocols the server and the clients both speak, sans I/O: HTTP/1.1 and WebSocket framing."""
