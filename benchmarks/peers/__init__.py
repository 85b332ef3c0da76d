"""PyTorch reference implementations of the steps `benchmarks.run` times, for the JAX/peer ratio.

    python -m benchmarks.peers.mae_vit_b16 --steps 20 --warmup 5 [--compile] --out peers.jsonl
    python -m benchmarks.peers.ddpm_unet --steps 20 --warmup 5 [--compile] --out peers.jsonl
    python -m benchmarks.peers.resnet18 --steps 20 --warmup 5 [--compile] --out peers.jsonl
    python -m benchmarks.ratio bench.jsonl peers.jsonl

Our own code, written from the architectures (facebookresearch/mae, DDPM's CIFAR-10 U-Net, the
CIFAR ResNet-18 of kuangliu/pytorch-cifar) at the shapes of the JAX cases: mcae/bench.py,
gradflow_prune/bench.py, unlearnable/bench.py. Each module imports torch only inside `main`, so
this package imports where PyTorch is not installed; `--tiny` shrinks a peer to seconds on a CPU.
"""
