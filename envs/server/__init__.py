"""The environment server: the wire protocol on asyncio (`env_server`), the sessions it holds, the
environment adapted to it (`runtime`), and the process a sandbox runs (`serve`, `python -m envs`)."""
