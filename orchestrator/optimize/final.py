"""After selection: the test split, played for the first time, by the initial and the best skill;
`report.json`, `best_skill.md` and the plot of validation per iteration.

    Scorer.release_test() ─► initial, best on test groups ─► report.json
    history.jsonl ─► validation.png (incumbent as a step line, each candidate a point, accepted ones marked)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hillclimb.skill import skill_sha
from orchestrator.optimize.history import History
from orchestrator.optimize.loop import Progress
from orchestrator.optimize.scoring import Score, Scorer
from orchestrator.optimize.uses import TaskUses, groups


async def report_on_test(
    scorer: Scorer,
    uses: TaskUses,
    initial: str,
    best: str,
    history: History,
    *,
    env: str,
    seed: int,
    rollouts: int,
    progress: Progress,
) -> dict[str, Any]:
    scorer.release_test()
    test = groups(uses.test, "test", env=env, seed=seed, rollouts=rollouts)
    episodes = len(test) * rollouts
    scores: dict[str, Score] = {}
    for name, skill in (("initial", initial), ("best", best)):
        scores[name] = await scorer.score(skill, test, progress(f"{name} skill, test", episodes))
    records = history.records
    validation = {r["sha"]: r["validation"]["candidate"] for r in records if "validation" in r}
    return {
        "sizes": {"train": len(uses.train), "validation": len(uses.validation), "test": len(uses.test)},
        "rollouts": rollouts,
        "iterations": records[-1]["iteration"] if records else 0,
        "accepted": sum(r["status"] == "accepted" for r in records),
        "candidates": sum(r["status"] != "initial" for r in records),
        "initial": _skill_figures(initial, scores["initial"], validation),
        "best": _skill_figures(best, scores["best"], validation),
        "wall_s": round(sum(r.get("wall_s", 0.0) for r in records), 1),
    }


def _skill_figures(skill: str, test: Score, validation: dict[str, float]) -> dict[str, Any]:
    return {
        "sha": skill_sha(skill),
        "chars": len(skill),
        "validation_mean_reward": validation.get(skill_sha(skill)),
        "test_pass1": test.pass1,
        "test_mean_reward": test.mean,
        "test_episodes": len(test.episodes),
    }


def write_outputs(out: Path, best: str, report: dict[str, Any], history: History) -> None:
    (out / "best_skill.md").write_text(best)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_validation(history, out / "validation.png")


def plot_validation(history: History, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in history.records if "validation" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    best, steps = None, []
    for r in records:
        if r["status"] in ("initial", "accepted"):
            best = r["validation"]["candidate"]
        steps.append((r["iteration"], best))
    ax.step([x for x, _ in steps], [y for _, y in steps], where="post", label="incumbent (validation)")
    for status, style in (("accepted", "o"), ("rejected", "x")):
        points = [(r["iteration"], r["validation"]["candidate"]) for r in records if r["status"] == status]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=f"{status} candidate")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mean reward")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
