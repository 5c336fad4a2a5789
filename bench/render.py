"""The benchmark tables of README.md and docs/, rendered from the committed result files.

A table lives in a document between two markers, and everything between them is rewritten:

    <!-- bench: env_step.json steps -->
    | ... the table `bench.env_step.tables(record)["steps"]` renders ... |
    <!-- /bench -->

    <!-- bench: headline -->          the README's headline table: rows from each file in
    <!-- /bench -->                   HEADLINE, by its module's `headline(record)`

Each result file is rendered by the benchmark module named in SOURCES, through pure functions
of the file's whole record: `tables(record) -> {block: markdown}` and, for the files in
HEADLINE, `headline(record) -> [(what, figure)]`. A record whose commit is dirty or unknown is refused:
a published figure must be reproducible from a commit.

    python -m bench.render            rewrite every block in place
    python -m bench.render --check    exit 1, naming each stale block, if any differs from its file
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import RESULTS

ROOT = RESULTS.parent.parent
DOCUMENTS = ("README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))))

SOURCES: dict[str, str] = {
    # result file (under bench/results/) → the module that renders it
    "main_job.json": "bench.train_figures",
    "main_job_costs.json": "bench.main_job",
    "lambda_sweep.json": "bench.lambda_sweep",
    "echo_smollm2_ablation.json": "bench.lambda_sweep",
    "sandbox_start.json": "bench.sandbox_start",
    "concurrency.json": "bench.concurrency",
    "env_step.json": "bench.env_step",
    "rollout.json": "bench.rollout",
    "smollm2.json": "bench.smollm2",
    "echo_smollm2.json": "bench.train_figures",
    "echo_smollm2_lr3e-4.json": "bench.train_figures",
    "batching.json": "bench.batching",
    "lora_smollm2.json": "bench.lora",
    "optimize_smollm2.json": "bench.optimize_smollm2",
    "echo_loss_cpu.json": "bench.echo_loss",
    "echo_loss_cpu_2k_all_impls.json": "bench.echo_loss",
    "aca_pool.json": "bench.aca_pool",
    "k8s_scale.json": "bench.k8s_scale",
    "aca_scale.json": "bench.aca_scale",
    "driver_load.json": "bench.driver_load",
    "step_stall.json": "bench.step_stall",
    "regression.json": "bench.regression",
    "regression_move.json": "bench.regression",
    "regression_move_steps.json": "bench.regression",
}

HEADLINE = (
    # the files whose `headline` rows make the README's headline table, in its order
    "main_job.json",
    "main_job_costs.json",
    "lambda_sweep.json",
    "echo_smollm2_ablation.json",
    "sandbox_start.json",
    "concurrency.json",
    "env_step.json",
    "rollout.json",
    "smollm2.json",
    "batching.json",
    "lora_smollm2.json",
    "optimize_smollm2.json",
    "echo_loss_cpu.json",
    "aca_pool.json",
    "k8s_scale.json",
    "aca_scale.json",
    "driver_load.json",
)

_BLOCK = re.compile(r"(<!-- bench: (?P<key>[^>]*?) -->\n)(?P<body>.*?)(<!-- /bench -->)", re.DOTALL)


class RenderError(Exception):
    """A block or a result file the renderer cannot use; the message names which and why."""


@dataclass(frozen=True)
class Rendered:
    """A result file read and its module found."""

    name: str
    record: dict[str, Any]
    tables: Callable[[dict[str, Any]], dict[str, str]]
    headline: Callable[[dict[str, Any]], list[tuple[str, str]]] | None


def load(name: str, results: Path = RESULTS) -> Rendered:
    if name not in SOURCES:
        raise RenderError(f"{name}: no module renders it (add it to bench.render.SOURCES)")
    path = results / name
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RenderError(f"{name}: cannot read {path}: {e}") from e
    commit = str(record.get("commit", "unknown"))
    if commit == "unknown" or commit.endswith("-dirty"):
        raise RenderError(
            f"{name} was measured at commit {commit!r}: only a result from a committed tree is published "
            "(re-run it from a clean checkout: `make bench`)"
        )
    module = importlib.import_module(SOURCES[name])
    return Rendered(name, record, module.tables, getattr(module, "headline", None))


def provenance(name: str, record: dict[str, Any]) -> str:
    """The line under every table: where its figures came from."""
    load_avg = record.get("machine", {}).get("load_avg_1_5_15_min")
    load = f" · host load {' / '.join(f'{x:.2f}' for x in load_avg)} (1 / 5 / 15 min) as written" if load_avg else ""
    return f"*`bench/results/{name}` · commit {record['commit']} · {record['date']}{load}*"


def headline(rendered: Iterable[Rendered]) -> str:
    lines = ["| what | figure | file in `bench/results/` |", "| --- | --- | --- |"]
    for r in rendered:
        if r.headline is None:
            raise RenderError(f"{r.name} is in HEADLINE but {SOURCES[r.name]} has no headline(record)")
        lines += [f"| {what} | {figure} | `{r.name}` |" for what, figure in r.headline(r.record)]
    return "\n".join(lines) + "\n"


def _body(key: str, cache: dict[str, Rendered], results: Path) -> str:
    if key == "headline":
        return headline(cache.setdefault(n, load(n, results)) for n in HEADLINE if (results / n).exists())
    name, _, block = key.partition(" ")
    rendered = cache.setdefault(name, load(name, results))
    tables = rendered.tables(rendered.record)
    if block not in tables:
        raise RenderError(f"{name} has no table {block!r} (its module renders {sorted(tables)})")
    return tables[block].rstrip("\n") + "\n\n" + provenance(name, rendered.record) + "\n"


def render(text: str, results: Path = RESULTS, cache: dict[str, Rendered] | None = None) -> str:
    """`text` with every bench block rewritten from its result file."""
    cache = {} if cache is None else cache
    return _BLOCK.sub(lambda m: m.group(1) + _body(m.group("key").strip(), cache, results) + m.group(4), text)


def stale_blocks(text: str, results: Path = RESULTS) -> list[str]:
    """The keys of the blocks whose text differs from what their files render."""
    cache: dict[str, Rendered] = {}
    return [
        m.group("key").strip()
        for m in _BLOCK.finditer(text)
        if m.group("body") != _body(m.group("key").strip(), cache, results)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = parser.parse_args()
    stale = []
    for doc in DOCUMENTS:
        path = ROOT / doc
        text = path.read_text()
        if args.check:
            stale += [f"{doc}: {key}" for key in stale_blocks(text)]
        elif (new := render(text)) != text:
            path.write_text(new)
            print(f"rewrote {doc}")
    if stale:
        sys.exit("stale benchmark tables (run `python -m bench.render`):\n  " + "\n  ".join(stale))


if __name__ == "__main__":
    main()
