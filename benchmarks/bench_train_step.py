"""Train-step time and memory: TLoRA against our LoRA, PEFT's LoRA, full fine-tuning and the floor.

One command each (results are JSON, plus a markdown table on stdout):

    PYTHONPATH=. python benchmarks/bench_train_step.py --device cpu  --out bench_cpu.json
    PYTHONPATH=. python benchmarks/bench_train_step.py --device cuda --out bench_gpu.json

CPU: the bundled all-MiniLM-L6-v2 with a 2-class head, float32, batch 16 × 128 tokens, one
intra-op thread by default (``--threads``); each step's process CPU time is recorded, and arms
are timed round-robin (one step of each arm per round). GPU: a LLaMA-shaped ~1B model from a config with random weights (hidden
2048, 16 layers, intermediate 5632), bf16, batch 8 × 1024 tokens, fused AdamW, CUDA events;
arms run one after another and the floor is measured at the start, middle and end.

Arms: ``floor`` (frozen base, one trainable scalar scaling the embeddings: a full backward
pass with no weight gradients), ``full``, and per rank and target set ``tlora`` (the default
fused path), ``lora`` (ours), ``peft`` (PEFT's LoRA, default: adapter weights in float32) and
``peft-bf16`` (``autocast_adapter_dtype=False``; GPU only, on a float32 CPU model it is the
same as ``peft``). Ablations at the largest rank: ``tlora-plain`` (the formula in autograd),
``tlora-folded`` ((x A)(α B C) in autograd), ``tlora-adapter`` (adapter Function, unfused add),
``tlora-merged`` (one product with W0 + ΔW, opt-in), ``tlora-cublas`` (the fused layer without
the Triton low-rank-epilogue GEMM, ``fused.set_backend("cublas")``; on a CPU the same as
``tlora``),
TLoRA with dropout ``--ablation-dropout`` (default 0.5) on "all": on the output with each mask
(``auto``: the hashed mask in the fused kernels where they run; ``redraw``, the torch mask drawn again
in the backward; ``store``) and on the input (redrawn or stored), and ``tlora+recorder`` (snapshots every step) when
``tlora_analysis.recording`` exists. Every adapter uses dropout 0 unless named; ``--dropout P``
gives the main grid's ``tlora`` (on its output, the mask chosen by "auto"), ``lora`` and ``peft``
arms (each on its input, as PEFT's ``lora_dropout``) dropout P, for like-for-like comparisons.

``--recorder-ab ROUNDS`` (GPU) times the recorder instead, as an A/B on one TLoRA model: blocks
of ``--steps`` steps without and with snapshots every step, alternated; ``--rounds N`` runs the
arm list N times in turn, to see drift between arms.

Host: on the GPU, the median host time to issue one step onto an idle GPU (``host ms``).

Memory: GPU peak allocated bytes per arm; on both, the bytes autograd saves for the backward
(counted with saved_tensors_hooks, parameters excluded) and the trainable parameter count.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tlora_analysis.adapters import LoRAConfig, TLoRAConfig, adapted_layers, apply_adapters, fused

CPU_TARGETS = {"qv": r".*\.(query|value)", "all": r".*encoder\.layer\.\d+\..*(query|key|value|dense)"}
GPU_TARGETS = {"qv": r".*\.(q_proj|v_proj)", "all": r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}


@dataclass
class Arm:
    """One configuration to time."""

    name: str
    rank: int | None = None
    targets: str | None = None  # "qv" | "all"
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name if self.rank is None else f"{self.name} r={self.rank} {self.targets}"


# TLoRA's dropout arms (r the largest, all layers): position-mask
DROPOUT_ARMS = ("output-auto", "output-redraw", "output-store", "input-redraw", "input-store")


def plan_arms(device: str, ranks: list[int], targets: list[str], recorder: bool, dropout: float = 0.0,
              ablation_dropout: float = 0.5) -> list[Arm]:
    """The arms in run order (GPU: the floor three times, to see drift)."""
    top = max(ranks)
    arms = [Arm("floor", options={"repeat": 0}), Arm("full")]
    methods = ["tlora", "lora", "peft"] + (["peft-bf16"] if device == "cuda" else [])
    grid = {"dropout": dropout} if dropout else {}
    for t in targets:
        for r in ranks:
            arms += [Arm(m, r, t, dict(grid)) for m in methods]
    if device == "cuda":
        arms.append(Arm("floor", options={"repeat": 1}))
    for t in targets if device == "cuda" else targets[-1:]:  # the CPU is slow: ablations on one target set
        arms += [Arm(f"tlora-{impl}", top, t) for impl in ("plain", "folded", "adapter", "merged", "cublas")]
    arms += [Arm("tlora", top, "all", {"dropout": ablation_dropout, "position": pos, "mask": mask})
             for pos, mask in (name.split("-") for name in DROPOUT_ARMS)]
    if recorder:
        arms.append(Arm("tlora+recorder", top, "all"))
    if device == "cuda":
        arms.append(Arm("floor", options={"repeat": 2}))
    return arms


# ----------------------------------------------------------------------------- models and data
def build_base(device: str) -> tuple[nn.Module, dict[str, torch.Tensor], dict]:
    """The base model (trainable nothing yet), one batch, and a description."""
    import transformers

    torch.manual_seed(0)
    if device == "cpu":
        from tlora_analysis.experiments.bundled import bundled_model_dir

        transformers.logging.set_verbosity_error()
        model = transformers.AutoModelForSequenceClassification.from_pretrained(bundled_model_dir(), num_labels=2)
        batch, length = 16, 128
        ids = torch.randint(1000, model.config.vocab_size, (batch, length))
        data = {"input_ids": ids, "labels": torch.randint(0, 2, (batch,))}
        info = {"model": "all-MiniLM-L6-v2 + 2-class head", "dtype": "float32", "batch": batch, "length": length}
        return model, data, info
    config = transformers.LlamaConfig(
        hidden_size=2048, num_hidden_layers=16, intermediate_size=5632, num_attention_heads=16,
        num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048)
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    batch, length = 8, 1024
    ids = torch.randint(0, config.vocab_size, (batch, length), device="cuda")
    info = {"model": "LLaMA-shaped, random weights (hidden 2048, 16 layers, intermediate 5632, vocab 32000)",
            "dtype": "bfloat16", "batch": batch, "length": length,
            "parameters": sum(p.numel() for p in model.parameters())}
    return model.cpu(), {"input_ids": ids, "labels": ids}, info


class Floor(nn.Module):
    """The frozen model behind one trainable scalar at the embeddings: backward reaches every layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        dtype = model.get_input_embeddings().weight.dtype
        self.scale = nn.Parameter(torch.ones((), dtype=dtype, device=model.get_input_embeddings().weight.device))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        embeds = self.model.get_input_embeddings()(input_ids) * self.scale
        return self.model(inputs_embeds=embeds, labels=labels)


def folded_adapter_output(layer) -> Callable[[torch.Tensor], torch.Tensor]:
    """α and B folded into C, alone, in plain autograd: (x A)(α B C)."""
    def adapter_output(x: torch.Tensor) -> torch.Tensor:
        return (x.to(layer.tlora_A.dtype) @ layer.tlora_A) @ ((layer.tlora_alpha * layer.tlora_B) @ layer.tlora_C)
    return adapter_output


def build_arm(arm: Arm, base: nn.Module, device: str) -> nn.Module:
    """A fresh copy of the base model set up as the arm says."""
    model = copy.deepcopy(base).to(device).train()  # the GPU base waits on the host: peaks count one model
    for p in model.parameters():
        p.requires_grad_(False)
    targets = (GPU_TARGETS if device == "cuda" else CPU_TARGETS).get(arm.targets)  # PEFT's regex strings
    ours = None if targets is None else "re:" + targets  # the package's name rule marks a regex with re:
    if arm.name == "floor":
        return Floor(model)
    if arm.name == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if arm.name.startswith("tlora"):
        config = TLoRAConfig(rank=arm.rank, target_modules=ours, dropout=arm.options.get("dropout", 0.0),
                             dropout_position=arm.options.get("position", "output"))
        apply_adapters(model, config)
        impl = arm.name.split("-", 1)[1] if "-" in arm.name else "fused"
        fused.set_backend("cublas" if impl == "cublas" else "auto")  # "auto": the kernel where it applies
        for layer in adapted_layers(model).values():
            with torch.no_grad():
                layer.tlora_B.normal_(std=0.01)  # a nonzero B, as after some training
            if impl == "folded":
                layer.impl = "plain"
                layer.adapter_output = folded_adapter_output(layer)
            else:
                layer.impl = "fused" if impl == "cublas" else impl
            layer.dropout_mask = arm.options.get("mask", "auto")
        return model
    if arm.name == "lora":
        return apply_adapters(model, LoRAConfig(rank=arm.rank, target_modules=ours,
                                                dropout=arm.options.get("dropout", 0.0)))
    import peft

    config = peft.LoraConfig(r=arm.rank, lora_alpha=arm.rank, lora_dropout=arm.options.get("dropout", 0.0),
                             target_modules=targets)
    return peft.get_peft_model(model, config, autocast_adapter_dtype=(arm.name == "peft"))


# ----------------------------------------------------------------------------- measuring
class Trainer:
    """One arm's model, optimizer and step; optionally a recorder with snapshots every step."""

    def __init__(self, arm: Arm, model: nn.Module, data: dict, device: str, tmp: Path) -> None:
        self.arm, self.model, self.data = arm, model, data
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=1e-5, fused=(device == "cuda"))
        self.recorder = None
        if arm.name == "tlora+recorder":
            from tlora_analysis.recording import SnapshotRecorder

            self.recorder = SnapshotRecorder(model, tmp / "run", schedule=1, store_base_weights=False, overwrite=True)
            self.recorder.attach(self.opt)

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.model(**self.data).loss.backward()
        self.opt.step()

    def saved_bytes(self) -> int:
        """Bytes autograd keeps for the backward in one step (parameters and buffers excluded)."""
        own = {t.untyped_storage().data_ptr() for t in list(self.model.parameters()) + list(self.model.buffers())}
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in own:
                storages[s.data_ptr()] = s.nbytes()
            return t

        self.opt.zero_grad(set_to_none=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self.model(**self.data).loss
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return sum(storages.values())

    def close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()


def time_steps_cuda(trainer: Trainer, steps: int) -> list[float]:
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        trainer.step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def host_issue_ms(trainer: Trainer, steps: int) -> list[float]:
    """Host time to issue one step onto an idle GPU: when it nears the GPU time, the step is
    bound by Python and launch overhead, and host jitter shows up as GPU time."""
    out = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.step()
        out.append(1000.0 * (time.perf_counter() - t0))
    torch.cuda.synchronize()
    return out


def time_step_cpu(trainer: Trainer) -> float:
    """CPU time of the process for one step: on a shared machine it is what the step costs,
    whoever else runs (wall time there measures the neighbours as much as the step)."""
    t0 = time.process_time()
    trainer.step()
    return 1000.0 * (time.process_time() - t0)


def summarize(arm: Arm, times_ms: list[float], tokens: int, extra: dict) -> dict:
    q = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) >= 2 else [times_ms[0]] * 3
    median = statistics.median(times_ms)
    return {"arm": arm.label, "method": arm.name, "rank": arm.rank, "targets": arm.targets, **arm.options,
            "steps": len(times_ms), "median_ms": median, "q25_ms": q[0], "q75_ms": q[2],
            "min_ms": min(times_ms), "max_ms": max(times_ms), "tokens_per_s": tokens / (median / 1000.0),
            "times_ms": times_ms, **extra}


def profile_cuda(arms: list[Arm], base: nn.Module, data: dict, tmp: Path, path: Path) -> None:
    """Per-kernel GPU time of three steps of each arm (torch.profiler): the kernels' summed time
    per step, then the top 60 by self time."""
    from torch.profiler import ProfilerActivity, profile

    with path.open("w") as f:
        for arm in arms:
            trainer = Trainer(arm, build_arm(arm, base, "cuda"), data, "cuda", tmp)
            for _ in range(3):
                trainer.step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    trainer.step()
                torch.cuda.synchronize()
            events = prof.key_averages()
            busy_ms = sum(e.self_device_time_total for e in events) / 3 / 1000
            options = "".join(f" {k} {v}" for k, v in arm.options.items())
            f.write(f"## {arm.label}{options}\n\nkernels' summed time per step: {busy_ms:.2f} ms\n\n")
            f.write(events.table(sort_by="self_cuda_time_total", row_limit=60, max_name_column_width=70))
            f.write("\n\n")
            del trainer
            gc.collect()
            torch.cuda.empty_cache()


def run_cuda(arms: list[Arm], base: nn.Module, data: dict, tokens: int, warmup: int, steps: int,
             tmp: Path, sink: Callable[[dict], None]) -> None:
    for arm in arms:
        model = build_arm(arm, base, "cuda")
        trainer = Trainer(arm, model, data, "cuda", tmp)
        for _ in range(warmup):
            trainer.step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        times = time_steps_cuda(trainer, steps)
        peak = torch.cuda.max_memory_allocated()
        host = statistics.median(host_issue_ms(trainer, 5))
        saved = trainer.saved_bytes()
        trainer.close()
        sink(summarize(arm, times, tokens, {"peak_bytes": peak, "saved_bytes": saved, "host_ms": host,
                                            "trainable": sum(p.numel() for p in trainer.params)}))
        del trainer, model
        gc.collect()
        torch.cuda.empty_cache()


def recorder_ab_cuda(base: nn.Module, data: dict, rank: int, rounds: int, block: int, tmp: Path) -> dict:
    """Recorder overhead on one TLoRA model (all layers): blocks of steps without and with a
    recorder snapshotting every step, alternated ``rounds`` times, so both kinds see the same
    machine (a shared host drifts by more than the effect). Round 0 is a warm-up. Per step: GPU
    time (CUDA events) and host time (until ``step()`` returns: the launch work, when the GPU
    queue does not fill)."""
    from tlora_analysis.recording import SnapshotRecorder

    arm = Arm("tlora", rank, "all")
    trainer = Trainer(arm, build_arm(arm, base, "cuda"), data, "cuda", tmp)
    kinds: dict[str, dict[str, list[float]]] = {k: {"gpu_ms": [], "host_ms": []} for k in ("without", "with")}
    for rnd in range(rounds):
        for kind in ("without", "with"):
            rec = None
            if kind == "with":
                rec = SnapshotRecorder(trainer.model, tmp / f"ab-{rnd}", schedule=1, store_base_weights=False)
                rec.attach(trainer.opt)
            torch.cuda.synchronize()
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(block)]
            host = []
            for start, end in events:
                t0 = time.perf_counter()
                start.record()
                trainer.step()
                end.record()
                host.append(1000 * (time.perf_counter() - t0))
            torch.cuda.synchronize()
            if rec is not None:
                rec.close()
            if rnd:
                kinds[kind]["gpu_ms"] += [s.elapsed_time(e) for s, e in events]
                kinds[kind]["host_ms"] += host
    out = {"rank": rank, "targets": "all", "rounds": rounds - 1, "block": block, **kinds}
    for kind in kinds:
        out[f"median_gpu_ms_{kind}"] = statistics.median(kinds[kind]["gpu_ms"])
        out[f"median_host_ms_{kind}"] = statistics.median(kinds[kind]["host_ms"])
    out["ratio"] = out["median_gpu_ms_with"] / out["median_gpu_ms_without"]
    return out


def run_cpu(arms: list[Arm], base: nn.Module, data: dict, tokens: int, warmup: int, rounds: int,
            tmp: Path, sink: Callable[[dict], None]) -> None:
    trainers = [Trainer(arm, build_arm(arm, base, "cpu"), data, "cpu", tmp) for arm in arms]
    saved = [t.saved_bytes() for t in trainers]
    for _ in range(warmup):
        for t in trainers:
            t.step()
    times: list[list[float]] = [[] for _ in trainers]
    for r in range(rounds):
        for i, t in enumerate(trainers):
            times[i].append(time_step_cpu(t))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    for arm, t, ts, sb in zip(arms, trainers, times, saved):
        t.close()
        sink(summarize(arm, ts, tokens, {"saved_bytes": sb, "trainable": sum(p.numel() for p in t.params)}))


# ----------------------------------------------------------------------------- report
def ratio_table(results: list[dict]) -> str:
    """Markdown: each arm against the floor (mean of its repeats) and PEFT at the same rank/targets."""
    floor_ms = statistics.mean(r["median_ms"] for r in results if r["method"] == "floor")
    floor_mem = statistics.mean(r.get("peak_bytes", 0) for r in results if r["method"] == "floor")
    peft = {(r["rank"], r["targets"]): r["median_ms"] for r in results if r["method"] == "peft"}
    lines = ["| arm | median ms (q25–q75) | × floor | × PEFT | tokens/s | peak GiB | × floor mem | saved MiB | trainable "
             "| host ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        label = r["arm"] + (" dropout " + " ".join(str(r[k]) for k in ("dropout", "position", "mask") if k in r)
                            if "dropout" in r else "")
        label += f" (#{r['repeat'] + 1})" if "repeat" in r else ""
        label += f" [round {r['round'] + 1}]" if "round" in r else ""
        p = peft.get((r["rank"], r["targets"]))
        peak = r.get("peak_bytes")
        cells = [label, f"{r['median_ms']:.1f} ({r['q25_ms']:.1f}–{r['q75_ms']:.1f})",
                 f"{r['median_ms'] / floor_ms:.3f}", f"{r['median_ms'] / p:.3f}" if p else "–",
                 f"{r['tokens_per_s']:,.0f}", f"{peak / 2**30:.2f}" if peak else "–",
                 f"{peak / floor_mem:.3f}" if peak and floor_mem else "–",
                 f"{r['saved_bytes'] / 2**20:.0f}", f"{r['trainable']:,}",
                 f"{r['host_ms']:.1f}" if "host_ms" in r else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment(device: str) -> dict:
    import peft
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "machine": platform.machine(), "cpu_threads": torch.get_num_threads()}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    return env


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (rewritten after each arm)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--targets", nargs="+", choices=["qv", "all"], default=["qv", "all"])
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: cuda 5, cpu 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per arm (default: cuda 25; cpu 3, one per round-robin round)")
    parser.add_argument("--only", nargs="*", default=None, help="keep only arms whose method is listed")
    parser.add_argument("--no-dropout", action="store_true", help="leave out the arms with dropout")
    parser.add_argument("--dropout-masks", nargs="+", choices=list(DROPOUT_ARMS), default=list(DROPOUT_ARMS),
                        help="the TLoRA dropout arms to keep, as position-mask (default: all)")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout of the main grid's tlora, lora and peft arms (default 0)")
    parser.add_argument("--ablation-dropout", type=float, default=0.5,
                        help="dropout of the TLoRA dropout arms (largest rank, all layers: output with the mask "
                             "'auto', 'redraw' and 'store', input with 'redraw' and 'store'; default 0.5, the paper's)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the (filtered) arm list this many times in turn, to see drift between arms")
    parser.add_argument("--recorder-ab", type=int, default=0, metavar="ROUNDS",
                        help="cuda: instead of the arms, time the recorder A/B on TLoRA (largest rank, all layers): "
                             "ROUNDS alternations of --steps steps without and with snapshots every step")
    parser.add_argument("--threads", type=int, default=1, help="cpu: torch intra-op threads (default 1)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="cuda: also write per-kernel times of the floor and TLoRA (largest rank, all layers; "
                             "dropout 0 and the --ablation-dropout on the output, in-kernel mask)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible here; use --device cpu")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    warmup = args.warmup if args.warmup is not None else (5 if args.device == "cuda" else 1)
    steps = args.steps if args.steps is not None else (25 if args.device == "cuda" else 3)
    try:
        import tlora_analysis.recording  # noqa: F401
        has_recorder = True
    except ImportError:
        has_recorder = False
    arms = plan_arms(args.device, args.ranks, args.targets, has_recorder, args.dropout, args.ablation_dropout)
    if args.only is not None:
        arms = [a for a in arms if a.name in args.only]
    if args.no_dropout:
        arms = [a for a in arms if not a.options.get("dropout")]
    arms = [a for a in arms if "position" not in a.options
            or f"{a.options['position']}-{a.options['mask']}" in args.dropout_masks]
    if args.rounds > 1:
        arms = [Arm(a.name, a.rank, a.targets, {**a.options, "round": i}) for i in range(args.rounds) for a in arms]
    base, data, info = build_base(args.device)
    tokens = info["batch"] * info["length"]
    report = {"device": args.device, "environment": environment(args.device), "model": info,
              "warmup": warmup, "steps": steps, "recorder_measured": has_recorder,
              "command": " ".join(sys.argv), "arms": [asdict(a) for a in arms], "results": []}

    def sink(result: dict) -> None:
        report["results"].append(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"{result['arm']:<32} {result['median_ms']:9.1f} ms  {result.get('peak_bytes', 0) / 2**30:6.2f} GiB",
              file=sys.stderr, flush=True)

    if args.recorder_ab:
        if args.device != "cuda":
            raise SystemExit("--recorder-ab is for --device cuda; on the CPU use benchmarks/bench_recorder.py")
        with tempfile.TemporaryDirectory() as tmp:
            result = recorder_ab_cuda(base, data, max(args.ranks), args.recorder_ab, steps, Path(tmp))
        report["recorder_ab"] = result
        args.out.write_text(json.dumps(report, indent=1))
        print(f"recorder A/B, r={result['rank']} all, {result['rounds']} rounds x {steps} steps: GPU median "
              f"{result['median_gpu_ms_without']:.1f} ms without, {result['median_gpu_ms_with']:.1f} ms with "
              f"(ratio {result['ratio']:.3f}); host median {result['median_host_ms_without']:.1f} / "
              f"{result['median_host_ms_with']:.1f} ms")
        return
    with tempfile.TemporaryDirectory() as tmp:
        if args.device == "cuda":
            run_cuda(arms, base, data, tokens, warmup, steps, Path(tmp), sink)
            if args.profile is not None:
                top = max(args.ranks)
                profile_cuda([Arm("floor"), Arm("tlora", top, "all"),
                              Arm("tlora", top, "all", {"dropout": args.ablation_dropout, "position": "output",
                                                        "mask": "auto"})], base, data, Path(tmp), args.profile)
        else:
            run_cpu(arms, base, data, tokens, warmup, steps, Path(tmp), sink)
    print(ratio_table(report["results"]))


if __name__ == "__main__":
    main()
