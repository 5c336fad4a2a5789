"""The clients of an environment server: `EnvClient` over the WebSocket, `HttpEnvClient` over the HTTP
session binding, and `EnvHandle`, which a provider hands out and which picks the one its transport needs."""
