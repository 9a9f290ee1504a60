#!/usr/bin/env bash
# Every GPU figure in docs/benchmarks.md ("On a GPU"), in one process tree that fits a short device
# lease (about 6 minutes on an H200). Needs pyro_vae and its dependencies importable, CUDA, and
# PYRO_VAE_DATA pointing at the torchvision MNIST root. Logs and metrics go to $1 (default gpu-out).
#
#     bash benchmarks/gpu.sh [OUT_DIR]
set -uo pipefail
out="${1:-gpu-out}"
mkdir -p "$out"
run="$(mktemp -d)"
trap 'rm -rf "$run"' EXIT
step() { echo "== $1"; shift; SECONDS=0; "$@" 2>&1 | tee -a "$out/log"; echo "   (${SECONDS} s)"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/log"
python3 -c "import sys, torch, pyro; print('python', sys.version.split()[0], 'torch', torch.__version__, 'pyro', pyro.__version__)" | tee -a "$out/log"

step "GPU tests" python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
step "training speed against plain PyTorch" python3 benchmarks/train_step.py --device cuda --epochs 2 --repeats 2
step "200 epochs, IWAE-paper VAE, compiled" \
    python3 -m pyro_vae train --config examples/configs/mnist_vae.toml --out "$run/vae200" --no-progress \
    --set train.device=cuda --set train.compile=on --set train.epochs=200
cp "$run/vae200/metrics.csv" "$out/vae200_metrics.csv"
step "log p(x), all 10,000 test images, K = 5000" python3 -m pyro_vae evaluate "$run/vae200" --num-samples 5000 --device cuda
step "estimator time and peak memory in K" python3 benchmarks/marginal.py --device cuda --repeats 1
for guide in diagonal full_rank iaf; do
    case $guide in
        diagonal) args=(--config examples/configs/mnist_vae.toml) ;;
        full_rank) args=(--config examples/configs/mnist_vae.toml --set 'model.guide={type="full_rank"}') ;;
        iaf) args=(--config examples/configs/mnist_iaf.toml) ;;
    esac
    step "posterior family $guide, 10 epochs" python3 -m pyro_vae train "${args[@]}" --out "$run/$guide" --no-progress \
        --set train.device=cuda --set train.compile=on
    cp "$run/$guide/metrics.csv" "$out/${guide}_metrics.csv"
    step "posterior family $guide, log p(x)" python3 -m pyro_vae evaluate "$run/$guide" --num-samples 1000 --limit 1000 --device cuda
done
