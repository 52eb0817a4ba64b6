"""Host time per adapted layer in eager mode: the fused TLoRA layer against a frozen nn.Linear.

In eager mode the benchmark model's step is issued layer by layer from Python, and with every
linear layer adapted the host's time per step comes close to the GPU's (docs/benchmarks.md,
"Host time per layer"). This measures what one layer costs the host, with tokens few enough
(``--tokens``) that the GPU never holds the host up:

- ``chain``: ``--layers`` layers in sequence (in = out), forward then backward, host µs per layer;
- ``siblings``: groups of three layers reading one input, summed (q, k, v of an attention
  block: the case that shares one projection, adapters/fused/shared_projection.py);
- ``calls``: single calls of the layer's pieces (µs per call, ``--calls`` back to back).

``--package DIR`` imports ``tlora_analysis`` from DIR first (an export of an older commit, for an
A/B in one session: ``git archive COMMIT tlora_analysis | tar -x -C DIR``).

    PYTHONPATH=. python benchmarks/bench_host_layer.py --out host_layer.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable


def host_us(fn: Callable[[], object], calls: int, repeats: int, sync: Callable[[], None]) -> float:
    """Median over ``repeats`` rounds of host µs per call, ``calls`` calls issued back to back."""
    rounds = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append(1e6 * (time.perf_counter() - t0) / calls)
        sync()
    return statistics.median(rounds)


def forward_backward_us(model, x, grad, layers: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    """[host µs per layer of the forward, of the backward], medians over ``repeats`` steps."""
    for _ in range(3):
        model(x).backward(grad)
    forward, backward = [], []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        y = model(x)
        t1 = time.perf_counter()
        y.backward(grad)
        t2 = time.perf_counter()
        sync()
        forward.append(1e6 * (t1 - t0) / layers)
        backward.append(1e6 * (t2 - t1) / layers)
    return [round(statistics.median(forward), 1), round(statistics.median(backward), 1)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--package", type=Path, help="import tlora_analysis from this folder first")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--layers", type=int, default=112, help="the chain's; the sibling groups take ⌊layers / 3⌋")
    parser.add_argument("--device", default="cuda", help="cuda (what it is for), or cpu for a smoke test")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    if args.package is not None:
        sys.path.insert(0, str(args.package.resolve()))
    import torch
    from torch import nn

    from tlora_analysis.adapters import TLoRAConfig, TLoRALinear
    from tlora_analysis.adapters.fused import lowrank_matmul, lowrank_matmul_with_core_grads

    dev, dtype, width, rank = args.device, torch.bfloat16, args.width, args.rank
    if dev == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU: this measures the host's cost of issuing GPU work (--device cpu: a smoke test)")
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def linear(adapted: bool, name: str) -> nn.Module:
        base = nn.Linear(width, width, bias=False).to(dev, dtype).requires_grad_(False)
        return TLoRALinear(base, name, TLoRAConfig(rank=rank, dropout=0.0)).to(dev, dtype) if adapted else base

    class Siblings(nn.Module):
        """x → q(x) + k(x) + v(x)."""

        def __init__(self, adapted: bool, i: int) -> None:
            super().__init__()
            self.proj = nn.ModuleList(linear(adapted, f"group{i}.{j}") for j in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj[0](x) + self.proj[1](x) + self.proj[2](x)

    x = torch.randn(args.tokens, width, device=dev, dtype=dtype, requires_grad=True)
    grad = torch.randn(args.tokens, width, device=dev, dtype=dtype)
    result: dict = {"package": str(args.package or "this checkout"), "tokens": args.tokens, "width": width,
                    "rank": rank, "layers": args.layers, "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "chain": {}, "siblings": {}}
    for name, adapted in (("nn.Linear", False), ("TLoRA", True)):
        chain = nn.Sequential(*(linear(adapted, f"layer{i}") for i in range(args.layers)))
        result["chain"][name] = forward_backward_us(chain, x, grad, args.layers, args.repeats, sync)
        groups = nn.Sequential(*(Siblings(adapted, i) for i in range(args.layers // 3)))
        result["siblings"][name] = forward_backward_us(groups, x, grad, 3 * (args.layers // 3), args.repeats,
                                                         sync)
        del chain, groups
    layer = linear(True, "layer")
    w0, a, b, c, alpha = (layer.base_layer.weight, layer.tlora_A, layer.tlora_B, layer.tlora_C, layer.tlora_alpha)
    xd = x.detach()
    u, gc, w0_t, a_t, b_t = xd @ a, grad @ c.T, w0.T, a.T, b.T
    result["calls"] = {name: round(host_us(fn, args.calls, args.repeats, sync), 2) for name, fn in {
        "nn.Linear forward": lambda: layer.base_layer(x),
        "TLoRA forward": lambda: layer(x),
        "lowrank_matmul (the forward's GEMM)": lambda: lowrank_matmul(xd, w0_t, u, c, core=b, scale=alpha),
        "lowrank_matmul_with_core_grads (the backward's)": lambda: lowrank_matmul_with_core_grads(
            grad, w0, gc, a_t, core=b_t, scale=alpha, y=u),
        "x A (cuBLAS)": lambda: xd @ a,
        "g Cᵀ (cuBLAS)": lambda: grad @ c.T,
    }.items()}
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
