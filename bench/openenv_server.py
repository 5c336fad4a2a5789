"""Serve `PingEnv` (or `SyncPingEnv`) with OpenEnv's own `create_app` under uvicorn: the reference server.

Served the way OpenEnv's docs and its environment template (`openenv init`'s `server/app.py`)
serve an environment: `uvicorn.run(app, host=..., port=...)` with uvicorn's defaults, which pick
uvloop for the loop, httptools for HTTP and websockets for `/ws` when they are installed (they
are, beside hillclimb). `asyncio` asks for the standard loop instead, for the comparison where
both sides run it. The template's `max_concurrent_envs=1` is raised to 64 for the 16 sessions.

python -m bench.openenv_server PORT [auto|asyncio] [PingEnv|SyncPingEnv]
"""

import sys

import uvicorn
from openenv.core.env_server.http_server import create_app

from bench import trivial_env

if __name__ == "__main__":
    loop = sys.argv[2] if len(sys.argv) > 2 else "auto"
    env = getattr(trivial_env, sys.argv[3] if len(sys.argv) > 3 else "PingEnv")
    app = create_app(env, trivial_env.PingAction, trivial_env.PingObservation, max_concurrent_envs=64)
    if loop == "auto":
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]))  # exactly the template's call
    else:
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop=loop)
