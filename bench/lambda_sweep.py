"""Tables of a λ sweep's result (`hillclimb train CONFIG --ablation SEEDS [--lambdas ...]`, copied into
bench/results/): the sweep itself runs in orchestrator/ablation.py; this only renders its file."""

from __future__ import annotations

from typing import Any


def _lam(value: float) -> str:
    return f"{value:g}"


def _spread(stats: dict[str, float], fmt: str = "{:.2f}") -> str:
    mean, low, high = (fmt.format(stats[k]) for k in ("mean", "min", "max"))
    return mean if low == high else f"{mean} ({low}–{high})"


def _pass1(arm: dict[str, Any]) -> str:
    episodes = arm["heldout_episodes"]
    counts = f"{episodes['solved']} of {episodes['played']}, ±{episodes['stderr']:.3f}"
    return f"{arm['heldout_pass1']['mean']:.3f} ({counts})"


def _against(arm: dict[str, Any]) -> str:
    versus = arm.get("against_lambda0")
    return f"+{versus['gained']} −{versus['lost']} (p = {versus['sign_test_p']:.2f})" if versus else ""


def tables(record: dict[str, Any]) -> dict[str, str]:
    """`per_lambda`: per λ, the mean over seeds with the min–max in brackets; pass@1 pools every seed's
    final held-out episodes; 'against λ = 0' counts tasks gained (+) and lost (−) seed by seed."""
    lines = [
        "| λ | held-out env-token CE, after warm-up → end | held-out pass@1 (solved of played, ±s.e.) "
        "| against λ = 0, sign test | train reward, last 10 steps | RL steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for arm in record["results"]["per_lambda"]:
        ce = f"{arm['heldout_env_ce_after_warmup']['mean']:.2f} → {_spread(arm['heldout_env_ce'])}"
        lines.append(
            f"| {_lam(arm['lambda'])} | {ce} | {_pass1(arm)} | {_against(arm)} | {_spread(arm['train_reward'])} "
            f"| {arm['rl_steps']['mean']:.0f} |"
        )
    return {"per_lambda": "\n".join(lines)}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    results = record["results"]
    arms = results["per_lambda"]
    lams = " / ".join(_lam(a["lambda"]) for a in arms)
    config = record["config"]
    model = config["policy"]["model"]
    model_name = model.get("name_or_path") or f"the {model['type']} model"
    steps = arms[0]["rl_steps"]["mean"]
    sweep = f"λ sweep of `{config['run']['name']}` ({model_name})"
    what = f"{sweep}, {steps:.0f} RL steps, {results['seeds']} seeds, λ = {lams}"
    ce = " / ".join(f"{a['heldout_env_ce']['mean']:.2f}" for a in arms)
    change = " / ".join(
        f"{(a['heldout_env_ce']['mean'] / a['heldout_env_ce_after_warmup']['mean'] - 1):+.1%}" for a in arms
    )
    pass1 = " / ".join(f"{a['heldout_pass1']['mean']:.3f}" for a in arms)
    episodes = arms[0]["heldout_episodes"]["played"]
    return [
        (f"{what}: held-out env-token CE at the end (its change over RL)", f"{ce} ({change})"),
        (f"{what}: held-out pass@1 (of {episodes} episodes each)", pass1),
    ]
