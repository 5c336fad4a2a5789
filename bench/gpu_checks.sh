#!/usr/bin/env bash
# Issues 33 and 35's checks on a lent one-GPU machine, in one run (about 10 minutes; a device call
# may last 10): the GPU-marked tests (a bf16 FSDP step over NCCL with a sharded checkpoint and its
# resume, TF32, checkpointed blocks; the log-prob kernels; the bench's arithmetic), then the learner
# benchmark at Qwen2-0.5B's shape in bf16 with activation checkpointing, MFU counting attention.
# Prepare the wheels here first (bash bench/gpu_wheels.sh), then, with the device tool:
#   run(command="bash bench/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# What comes back is under $OUT: the test log, learner_gpu.json, and nvidia-smi's view.
# Not here, and why: vLLM (its wheel and CUDA stack are far over the 64 MiB a call may carry, and
# the machine reaches no index), so vLLM's tests, its weight swap under a prompt longer than one
# KV block and its generation benchmark skip, saying so (tests/trainers/test_policy_vllm.py holds
# the swap to a stand-in engine on CPU); and the SmolLM2 runs (its 98 MB GGUF is over the same
# limit, and the machine cannot pull it).
set -uo pipefail
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
timeout 300 python3 -m pytest -m gpu -p no:cacheprovider -q -rs -s tests/trainers/test_learner_gpu.py \
    tests/trainers/test_losses_logprobs.py tests/trainers/test_policy_vllm.py tests/bench/test_learner_gpu_bench.py \
    2>&1 | tee "$OUT/test_gpu.log"
timeout 240 python3 -m bench.learner_gpu --device cuda --out "$OUT/learner_gpu.json" 2>&1 | tee "$OUT/learner_gpu.log"
