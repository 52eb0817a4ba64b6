"""Factored vs dense: singular values and cosine of ΔW at out = in = 1024, 2048, 4096, r = 8, 32.

Run: .venv/bin/python benchmarks/bench_lowrank.py [--sizes 1024 2048 4096] [--repeats 5]

Each (size, rank) builds two random TLoRA-shaped updates (left Cᵀ, core Bᵀ, right Aᵀ, scale α)
and times, in the same process:
- factored: FactoredUpdate(...).singular_values() and .cosine() from the factors (fresh
  objects each repeat, so the QR work is counted);
- dense: materialising ΔW (out × in, float64) then numpy's SVD (compute_uv=False) or the
  elementwise cosine; the cosine is also timed on ready-made dense matrices.
Medians over repeats are printed as a markdown table; --json writes the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from tlora_analysis.lowrank import FactoredUpdate


def timed(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def factors(rng: np.random.Generator, n: int, r: int):
    return rng.standard_normal((n, r)), rng.standard_normal((r, r)), rng.standard_normal((r, n)), rng.uniform(0.5, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dense-repeats", type=int, default=3, help="repeats of the slow dense SVD")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        for r in args.ranks:
            fa, fb = factors(rng, n, r), factors(rng, n, r)
            fac_sv = timed(lambda: FactoredUpdate(*fa).singular_values(), args.repeats)
            fac_cos = timed(lambda: FactoredUpdate(*fa).cosine(FactoredUpdate(*fb)), args.repeats)
            dense_of = lambda f: f[3] * f[0] @ f[1] @ f[2]  # noqa: E731
            den_sv = timed(lambda: np.linalg.svd(dense_of(fa), compute_uv=False), args.dense_repeats)

            def dense_cos(a=None, b=None):
                a = dense_of(fa) if a is None else a
                b = dense_of(fb) if b is None else b
                return np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))

            den_cos = timed(dense_cos, args.repeats)
            da, db = dense_of(fa), dense_of(fb)
            den_cos_ready = timed(lambda: dense_cos(da, db), args.repeats)
            # agreement, so the speed is not bought with accuracy
            s_f, s_d = FactoredUpdate(*fa).singular_values(), np.linalg.svd(da, compute_uv=False)[:r]
            err_sv = float(np.max(np.abs(s_f - s_d)) / s_d[0])
            err_cos = abs(FactoredUpdate(*fa).cosine(FactoredUpdate(*fb)) - dense_cos(da, db))
            rows.append(dict(n=n, r=r, factored_sv=fac_sv, dense_sv=den_sv, factored_cos=fac_cos,
                             dense_cos=den_cos, dense_cos_ready=den_cos_ready, err_sv=err_sv, err_cos=err_cos))
            print(f"done n={n} r={r}", flush=True)
    print(f"\nMachine: {platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"repeats {args.repeats} (dense SVD {args.dense_repeats}); times are medians [min–max]\n")
    print("| out = in | r | σ factored | σ dense (SVD) | speed-up | cos factored | cos dense (incl. ΔW) | "
          "speed-up | cos dense (ΔW given) | max rel. err σ | abs. err cos |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ms = lambda t: f"{t[0] * 1e3:.3g} ms [{t[1] * 1e3:.3g}–{t[2] * 1e3:.3g}]"  # noqa: E731
    for x in rows:
        print(f"| {x['n']} | {x['r']} | {ms(x['factored_sv'])} | {ms(x['dense_sv'])} | "
              f"{x['dense_sv'][0] / x['factored_sv'][0]:,.0f}× | {ms(x['factored_cos'])} | {ms(x['dense_cos'])} | "
              f"{x['dense_cos'][0] / x['factored_cos'][0]:,.0f}× | {ms(x['dense_cos_ready'])} | "
              f"{x['err_sv']:.1e} | {x['err_cos']:.1e} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
