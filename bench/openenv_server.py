"""Serve `PingEnv` (or `SyncPingEnv`) with OpenEnv's own `create_app` under uvicorn: the reference server.

python -m bench.openenv_server PORT [asyncio|uvloop] [PingEnv|SyncPingEnv]
"""

import sys

import uvicorn
from openenv.core.env_server.http_server import create_app
from openenv.core.env_server.types import ConcurrencyConfig

from bench import trivial_env

if __name__ == "__main__":
    loop = sys.argv[2] if len(sys.argv) > 2 else "auto"
    env = getattr(trivial_env, sys.argv[3] if len(sys.argv) > 3 else "PingEnv")
    app = create_app(
        env,
        trivial_env.PingAction,
        trivial_env.PingObservation,
        concurrency_config=ConcurrencyConfig(max_concurrent_envs=64, session_timeout=300),
    )
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", loop=loop)
