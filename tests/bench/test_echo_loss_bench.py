"""The loss benchmark's smoke run: it runs end to end and writes the JSON the results page reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_writes_expected_json(tmp_path: Path) -> None:
    out = tmp_path / "echo_loss.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.echo_loss", "--quick", "--device", "cpu", "--out", str(out)]
        + ["--impls", "naive", "fused", "chunked"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "median s" in proc.stdout and "tokens/s" in proc.stdout  # both tables printed

    data = json.loads(out.read_text())
    assert {"benchmark", "date", "commit", "torch", "device", "machine", "config", "cases", "mfu"} <= data.keys()
    assert data["device"]["type"] == "cpu" and data["config"]["quick"] is True
    config_keys = {"seq_lens", "vocab", "hidden", "reps", "chunk_tokens", "chunk_vocab", "dtype", "memory_method"}
    assert config_keys <= data["config"].keys()

    cases = {(c["seq_len"], c["impl"]): c for c in data["cases"]}
    assert set(cases) == {(s, i) for s in data["config"]["seq_lens"] for i in ("naive", "fused", "chunked")}
    for case in cases.values():
        assert case["status"] == "ok", case
        assert {"median", "min", "max", "mean", "std"} <= case["time_s"].keys() and case["time_s"]["n"] == 3
        assert case["cpu_time_s"]["n"] == 3 and case["peak_mib"]["n"] == 3
        assert case["time_s"]["min"] > 0 and case["peak_mib"]["max"] > 0
    assert all("time_vs_naive" in c and "mem_vs_naive" in c for c in data["cases"] if c["impl"] != "naive")

    assert [c["impl"] for c in data["mfu"]] == ["naive", "fused", "chunked"]
    for case in data["mfu"]:
        assert case["hidden"] == data["config"]["mfu_hidden"] and case["tokens_per_s"] > 0
        assert case["mfu"] is None  # no peak is known for a CPU unless --peak-tflops is given
    flops = {c["impl"]: c["hardware_tflops_per_s"] / c["model_tflops_per_s"] for c in data["mfu"]}
    assert flops["fused"] == 1.0 and flops["chunked"] == pytest.approx(8 / 6)  # the recompute fused saves
