"""Non-parametric learning on a real model: `hillclimb optimize` with SmolLM2-135M-Instruct as the agent,
served on this machine by `hillclimb model serve`, a built-in proposer, and toy_terminal's tasks.

    python -m bench.optimize_smollm2 [--iterations 6] [--skill configs/skills/toy_terminal.md]
        ─► model serve (subprocess) ─► hillclimb optimize (subprocess) ─► bench/results/optimize_smollm2.json

It records what the run's own files say (report.json, history.jsonl): validation and test pass@1
of the initial and the best skill, each candidate's fate, and the wall time, whatever they are.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import markdown_table, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
MODEL = "smollm2-135m-instruct"
# As configs/echo_smollm2.yaml plays toy_terminal: a few short turns, mildly sampled.
EPISODE = [
    "rollout.episode.max_turns=3",
    "rollout.episode.sampling.max_new_tokens=24",
    "rollout.episode.sampling.temperature=0.7",
    "policy.max_concurrency=16",
]


def serve(log: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "orchestrator", "model", "serve", MODEL, "--port", str(port), "--max-batch", "16"]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not (found := re.search(r"at (http://127\.0\.0\.1:\d+/v1)", log.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"model serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return process, found.group(1)


def _table(results: dict) -> tuple[list[str], list[list[object]]]:
    report = results["report"]
    rows = [
        [name, f"{skill['validation_mean_reward']:.3f}", f"{skill['test_pass1']:.3f}", skill["chars"]]
        for name in ("initial", "best")
        for skill in [report[name]]
    ]
    return ["skill", "validation reward", f"test pass@1 ({report['best']['test_episodes']} episodes)", "chars"], rows


def tables(record: dict) -> dict[str, str]:
    return {"skills": markdown_table(*_table(record["results"]))}


def headline(record: dict) -> list[tuple[str, str]]:
    report = record["results"]["report"]
    return [
        (
            "`hillclimb optimize`, SmolLM2-135M as the agent: candidates accepted; test pass@1 initial → best",
            f"{report['accepted']} of {report['candidates']}; {report['initial']['test_pass1']:.3f} → "
            f"{report['best']['test_pass1']:.3f} ({report['best']['test_episodes']} episodes)",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--proposer", default="builtin")
    parser.add_argument("--skill", type=Path, default=REPO / "configs" / "skills" / "toy_terminal.md")
    parser.add_argument("--validation-tasks", type=int, default=24)
    parser.add_argument("--train-tasks", type=int, default=12)
    parser.add_argument("--rollouts", type=int, default=2)
    parser.add_argument(
        "--port", type=int, default=18321, help="the server's port: the endpoint is part of what a rerun must share"
    )
    parser.add_argument("--attempts", type=int, default=3, help="runs of the same command, each resuming the last")
    parser.add_argument("--out", type=Path, default=None, help="optimize's output directory (default: a temporary one)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="optimize-smollm2-")) / "opt"
    settings = {
        "model": MODEL,
        "env": "toy_terminal",
        "proposer": args.proposer,
        "iterations": args.iterations,
        "initial_skill": str(args.skill.relative_to(REPO)) if args.skill.is_relative_to(REPO) else str(args.skill),
        "validation_tasks": args.validation_tasks,
        "train_tasks": args.train_tasks,
        "rollouts": args.rollouts,
        "episode": EPISODE,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    process, url = serve(out.parent / "serve.log", args.port)
    started = time.monotonic()
    attempts = []
    try:
        command = [sys.executable, "-m", "orchestrator", "optimize", "toy_terminal", "-m", MODEL, "--base-url", url]
        command += ["--api-key-env", "", "--out", str(out), "--proposer", args.proposer, "--skill", str(args.skill)]
        command += ["--iterations", str(args.iterations), "--rollouts", str(args.rollouts)]
        command += ["--validation-tasks", str(args.validation_tasks), "--train-tasks", str(args.train_tasks)]
        for override in EPISODE:
            command += ["--set", override]
        # An evaluation that lost episodes to a timeout stops resumably (exit 2): run it again, as a user would.
        while len(attempts) < args.attempts and (not attempts or attempts[-1]["exit"] != 0):
            begun = time.monotonic()
            code = subprocess.run(command, cwd=REPO).returncode
            attempts.append({"exit": code, "wall_s": time.monotonic() - begun})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    if attempts[-1]["exit"] != 0:
        raise SystemExit(f"optimize failed {len(attempts)} times; see the output above")
    wall_s = time.monotonic() - started
    report = json.loads((out / "report.json").read_text())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    candidates = [
        {k: r.get(k) for k in ("iteration", "status", "reason", "note", "train", "validation")} for r in history
    ]
    best = (out / "best_skill.md").read_text()
    results = {"wall_s": wall_s, "attempts": attempts, "report": report, "candidates": candidates, "best_skill": best}
    path = write_result("optimize_smollm2", settings, results)
    print_table(*_table(results))
    print(f"{report['accepted']} of {report['candidates']} candidates accepted; {wall_s / 60:.1f} min; {path}")


if __name__ == "__main__":
    main()
