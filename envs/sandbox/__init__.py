"""The inside of a sandbox: the warden that runs commands under each role's uid, the server's side
of it, the system call filter, and running what decides a reward out of the agent's reach.

The warden imports only the standard library and `agent_processes`; keep this file free of imports
too: a pod's agent and verifier containers run the warden from a copy of those files alone
(docker/Dockerfile), under uids that cannot read the rest of the code.
"""
