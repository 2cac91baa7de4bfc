"""Tuned TVM vs onnxruntime latency on this CPU: dense and collapsed models, side by side in one run.

    python benchmarks/tvm_latency.py                                   # small CNN exported inline
    python benchmarks/tvm_latency.py --case mobilenet_v2 --trials 256  # CIFAR MobileNetV2 dense + collapsed
    python benchmarks/tvm_latency.py a.onnx b.onnx --trials 64 128     # any ONNX files, two budgets
    python benchmarks/tvm_latency.py --case swin_t --trials 256        # the small ViT, dense + collapsed
    python benchmarks/tvm_latency.py --case mobilenet_v2 --variants collapsed --trials 136 \
        --layouts NCHW NHWC                                            # layouts side by side
    python benchmarks/tvm_latency.py ... --json run.json               # keep the raw results
    python benchmarks/tvm_latency.py --docs-from run1.json run2.json   # write docs/tvm.md's table

For every model: onnxruntime (CPUExecutionProvider, all cores, thread spinning off), TVM untuned
(``tvm.compile`` default schedules) and TVM tuned with MetaSchedule (weight prepacking, anchor-block
database) at each trial budget.  Each budget tunes into a *fresh* database (so its tuning time is
honest); within a budget the collapsed model is tuned first and the dense one second in the same
database, so kernels they share are reused (reported as "from DB").  All latencies are measured
after all tuning, interleaved in rounds (median of the per-round medians).  ``--profile`` times
each VM call of the tuned collapsed model (``VirtualMachine.set_instrument``) to show the time
spent outside the tuned kernels.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for p in (ROOT, HERE):
    if p not in sys.path:
        sys.path.insert(0, p)

DOCS = os.path.join(ROOT, "docs", "tvm.md")
BEGIN = "<!-- tvm-latency:begin -->"
END = "<!-- tvm-latency:end -->"


def _default_models(tmp: str) -> list[tuple[str, str]]:
    """A small CNN (conv-bn-relu x2, pool, linear), 1x3x32x32, 16 channels, exported inline."""
    import onnx

    from tvm_integration.testing import tiny_cnn_onnx

    model, _ = tiny_cnn_onnx(channels=16, size=32)
    path = os.path.join(tmp, "small_cnn_16ch_32px.onnx")
    onnx.save(model, path)
    return [("small_cnn_16ch_32px", path)]


def _case_models(case: str, tmp: str, variants=("collapsed", "dense")) -> list[tuple[str, str]]:
    """Dense (onnxslim) and collapsed variants of a merge_latency.py case, batch 1."""
    import onnx

    import merge_latency as ml

    models, _stats, _shape = ml.variants(case, 1, tmp)
    out = []
    for label, tag in (("(c) collapse_passes", "collapsed"), ("(a) dense+onnxslim", "dense")):
        if tag not in variants:
            continue
        path = os.path.join(tmp, f"{case}_{tag}.onnx")
        onnx.save(models[label], path)
        out.append((f"{case} {tag}", path))
    return out


def _measure_rounds(fns: dict, rounds: int) -> dict:
    """Median over ``rounds`` of each function's median, called in interleaved order."""
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            got[k].append(f())
    return {k: float(np.median(v)) for k, v in got.items()}


_AB_CODE = """
import sys, numpy as np, tvm
from tvm import relax
lib, shape, repeat = sys.argv[1], tuple(int(x) for x in sys.argv[2].split(",")), int(sys.argv[3])
vm = relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal(shape).astype("float32"))
vm.set_input("main", x)
t = vm.time_evaluator("invoke_stateful", tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=10)
nt = tvm.get_global_func("runtime.NumThreads")()
print(nt, t("main").median * 1e3)
"""


def threads_ab(executable, inputs, tmp: str, cores: int, repeat: int) -> dict:
    """The same tuned library timed in fresh processes with TVM_NUM_THREADS=1 and =cores, alternating."""
    import subprocess

    from tvm_integration import compile as tc

    lib = tc.export_library(executable, os.path.join(tmp, f"ab_{id(executable)}.so"))
    (arr,) = list(inputs.values())
    got: dict[int, list[float]] = {1: [], cores: []}
    used: dict[int, int] = {}
    for _ in range(2):
        for nt in (1, cores):
            env = dict(os.environ, TVM_NUM_THREADS=str(nt))
            out = subprocess.run([sys.executable, "-c", _AB_CODE, lib, ",".join(map(str, arr.shape)), str(repeat)],
                                 env=env, capture_output=True, text=True, timeout=300, check=True)
            n, ms = out.stdout.split()[-2:]
            used[nt] = int(n)
            got[nt].append(float(ms))
    return {f"threads_{nt}_ms": float(np.median(v)) for nt, v in got.items()} | {"runtime_threads": used}


def _config_key(budget: int, layout: str, layouts: list[str]) -> str:
    """Column key of one tuned configuration (the layout is named only when several are compared)."""
    return f"{budget}" if len(layouts) == 1 else f"{budget}_{layout}"


def run_benchmark(models, target_spec: str, budgets: list[int], repeat: int, work_dir: str,
                  profile: bool = False, ab: bool = False, log=print, layouts: list[str] | None = None) -> dict:
    import onnx

    from tvm_integration import compile as tc
    from tvm_integration.__main__ import random_inputs
    from tvm_integration.targets import configure_runtime_threads, resolve_target
    from tvm_integration.tuning import tune_with_report

    target, info = resolve_target(target_spec)
    layouts = [tc.check_layout(x) for x in (layouts or [tc.default_layout(target)])]
    configs = [(b, lay, _config_key(b, lay, layouts)) for b in budgets for lay in layouts]
    threads = configure_runtime_threads(info.num_cores) if info.kind == "llvm" else None
    t_all = time.perf_counter()
    loaded = []
    for name, path in models:
        model = onnx.load(path)
        inputs = random_inputs(model)
        mod = tc.import_onnx(model)
        ref = tc.run_ort(model, inputs)
        ex = tc.build(mod, target)
        np.testing.assert_allclose(tc.run(ex, inputs)[0], ref[0], rtol=1e-3, atol=1e-4)
        loaded.append({"name": name, "model": model, "inputs": inputs, "mod": mod, "ref": ref, "untuned": ex})

    tuning = []  # one entry per (budget, model)
    for budget, layout, key in configs:
        db_dir = os.path.join(work_dir, f"budget{key}")
        for m in loaded:
            log(f"{m['name']}: tuning with {budget} trials, layout {layout}, into {db_dir}")
            db, rep = tune_with_report(m["mod"], target, info, work_dir=db_dir, trials=budget, progress=False,
                                       shared_database=False,  # each budget starts from scratch
                                       layout=layout, log=lambda s: log("  " + s))
            ex = tc.build(m["mod"], target, database=db, layout=layout)
            np.testing.assert_allclose(tc.run(ex, m["inputs"])[0], m["ref"][0], rtol=1e-3, atol=1e-4)
            m[f"tuned{key}"] = ex
            tuning.append({
                "model": m["name"], "budget": budget, "layout": layout, "key": key, "seconds": rep.seconds,
                "tasks": len([t for t in rep.tasks if not t.skipped]), "tasks_tuned": rep.tasks_tuned,
                "from_database": rep.tasks_from_database(), "tuned_functions": len(ex.tuned_functions),
                "untuned_functions": ex.untuned_functions,
                "num_trials_per_iter": rep.num_trials_per_iter, "max_trials_per_task": rep.max_trials_per_task,
                "sum_task_best_us": rep.estimated_total_us(),
                "per_task": [{"name": t.name, "flops": t.flops, "weight": t.weight, "best_us": t.best_us,
                              "records": t.records, "from_database": t.reused}
                             for t in rep.tasks if not t.skipped],
            })

    log("measuring (interleaved rounds)...")
    per_round = max(3, repeat // 3)
    fns = {}
    for m in loaded:
        fns[(m["name"], "ort")] = (lambda m=m: tc.measure_ort_latency(m["model"], m["inputs"], repeat=per_round))
        fns[(m["name"], "untuned")] = (lambda m=m: tc.measure_latency(m["untuned"], m["inputs"], repeat=per_round))
        for _b, _lay, key in configs:
            fns[(m["name"], f"tuned{key}")] = (
                lambda m=m, key=key: tc.measure_latency(m[f"tuned{key}"], m["inputs"], repeat=per_round))
    lat = _measure_rounds(fns, 3)
    rows = []
    for m in loaded:
        row = {"model": m["name"], "ort_ms": lat[(m["name"], "ort")], "tvm_untuned_ms": lat[(m["name"], "untuned")]}
        for _b, _lay, key in configs:
            row[f"tvm_tuned_{key}_ms"] = lat[(m["name"], f"tuned{key}")]
        rows.append(row)
    prof = None
    if profile:
        b, _lay, key = configs[-1]
        prof = {}
        for m in loaded:
            p = tc.profile(m[f"tuned{key}"], m["inputs"], runs=30)
            prof[m["name"]] = {"budget": key, "total_us": p["total_us"], "calls_us": p["calls_us"],
                               "outside_us": p["outside_us"], "rows": p["rows"][:12]}
    ab_res = None
    if ab:
        ab_res = {}
        with tempfile.TemporaryDirectory() as abtmp:
            for m in loaded:
                ab_res[m["name"]] = {"budget": configs[-1][2], **threads_ab(
                    m[f"tuned{configs[-1][2]}"], m["inputs"], abtmp, info.num_cores or 1, max(3, repeat // 3))}
    try:
        import tvm

        tv = tvm.__version__
    except Exception:  # pragma: no cover
        tv = "?"
    from tvm_integration.targets import host_cpu_name

    return {
        "date": _dt.date.today().isoformat(), "machine": platform.machine(), "cpu": host_cpu_name(),
        "cores": os.cpu_count(), "load_avg": os.getloadavg(), "tvm": tv, "target": target_spec,
        "target_json": info.target_json, "threads": threads, "repeat": repeat, "budgets": budgets,
        "layouts": layouts, "configs": [key for _b, _l, key in configs],
        "rows": rows, "tuning": tuning, "profile": prof, "threads_ab": ab_res, "seconds": time.perf_counter() - t_all,
    }


def _f(v, fmt="{:.3f}"):
    return "-" if v is None else fmt.format(v)


def format_markdown(results: list[dict]) -> str:
    out = []
    for res in results:
        b = res.get("configs") or res["budgets"]
        out.append(
            f"Measured on {res['date']}: {res['machine']} `{res['cpu']}`, {res['cores']} cores, SHARED machine "
            f"(load average at the end {res['load_avg'][0]:.1f}), apache-tvm {res['tvm']}, target "
            f"`{json.dumps(res['target_json'], separators=(',', ':'))}`, TVM runtime threads "
            f"{(res.get('threads') or {}).get('runtime_threads')}, onnxruntime {res['cores']} intra-op threads "
            f"(spinning off); median of 3 interleaved rounds of {max(3, res['repeat'] // 3)}. "
            f"Whole run {res['seconds']:.0f} s."
        )
        out.append("")
        head = "| model | ORT (ms) | TVM untuned (ms) | " + " | ".join(f"TVM tuned {str(x).replace('_', ' trials ')}{'' if '_' in str(x) else ' trials'} (ms)" for x in b) + " |"
        out += [head, "|---|" + "---:|" * (2 + len(b))]
        for r in res["rows"]:
            out.append(f"| {r['model']} | {_f(r['ort_ms'])} | {_f(r['tvm_untuned_ms'])} | "
                       + " | ".join(_f(r.get(f'tvm_tuned_{x}_ms')) for x in b) + " |")
        out.append("")
        out.append("| model | trials | tuning (s) | tasks tuned / from DB | per round / max per task | tuned kernels "
                   "| untuned kernels | sum of per-task best (ms) |")
        out.append("|---|---:|---:|---:|---:|---:|---|---:|")
        for t in res["tuning"]:
            est = t["sum_task_best_us"]
            out.append(
                f"| {t['model']} | {t.get('key', t['budget'])} | {t['seconds']:.0f} | {t['tasks_tuned']} / {len(t['from_database'])} "
                f"| {_f(t['num_trials_per_iter'], '{}')} / {_f(t['max_trials_per_task'], '{}')} "
                f"| {t['tuned_functions']}/{t['tasks']} | {', '.join(t['untuned_functions']) or '-'} "
                f"| {_f(None if est is None else est / 1e3)} |"
            )
        last = [t for t in res["tuning"] if str(t.get("key", t["budget"])) == str(b[-1])]
        for t in last:
            out.append("")
            out.append(f"Per task, {t['model']}, {t.get('key', t['budget'])} trials (best latency measured while tuning; "
                       "records = measured candidates in the database):")
            out.append("")
            out.append("| kernel | MFLOP | weight | best (us) | records | from DB |")
            out.append("|---|---:|---:|---:|---:|---|")
            for pt in sorted(t["per_task"], key=lambda x: -(x["best_us"] or 0) * x["weight"]):
                out.append(f"| {pt['name']} | {pt['flops'] / 1e6:.2f} | {pt['weight']} | {_f(pt['best_us'], '{:.1f}')} "
                           f"| {pt['records']} | {'yes' if pt['from_database'] else ''} |")
        if res.get("threads_ab"):
            out.append("")
            out.append("Runtime threads, same tuned library in fresh processes (`TVM_NUM_THREADS`; without it "
                       "TVM 0.27 takes half the x86 cores):")
            out.append("")
            out.append("| model | trials | 1 thread (ms) | all cores (ms) |")
            out.append("|---|---:|---:|---:|")
            for name, a in res["threads_ab"].items():
                other = [k for k in a if k.startswith("threads_") and k != "threads_1_ms"]
                out.append(f"| {name} | {a['budget']} | {_f(a.get('threads_1_ms'))} | "
                           f"{_f(a.get(other[0]) if other else None)} |")
        if res.get("profile"):
            for name, p in res["profile"].items():
                out.append("")
                out.append(f"Where the time goes, {name}, tuned {p['budget']} trials (VM instrument, "
                           f"{p['total_us']:.0f} us per instrumented call, {p['calls_us']:.0f} us inside calls, "
                           f"{p['outside_us']:.0f} us VM dispatch + instrument overhead):")
                out.append("")
                out.append("| callee | calls | us per model call |")
                out.append("|---|---:|---:|")
                for r in p["rows"][:10]:
                    out.append(f"| {r['name']} | {r['count']:.0f} | {r['total_us']:.1f} |")
        out.append("")
    return "\n".join(out).rstrip()


def write_docs(text: str, path: str = DOCS) -> None:
    block = f"{BEGIN}\n{text}\n{END}"
    if os.path.exists(path):
        doc = open(path).read()
        if BEGIN in doc and END in doc:
            pre, rest = doc.split(BEGIN, 1)
            _, post = rest.split(END, 1)
            doc = pre + block + post
        else:
            doc = doc.rstrip() + "\n\n## Measured latency\n\n" + block + "\n"
    else:
        doc = "# TVM\n\n## Measured latency\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="ONNX model paths (default: a small CNN exported inline)")
    p.add_argument("--case", default=None, help="a benchmarks/merge_latency.py case (e.g. mobilenet_v2): "
                   "its dense and collapsed models, batch 1")
    p.add_argument("--variants", nargs="+", default=["collapsed", "dense"], choices=["collapsed", "dense"],
                   help="with --case: which variants (default both; the collapsed one is tuned first)")
    p.add_argument("--target", default="cpu")
    p.add_argument("--trials", type=int, nargs="+", default=[64], help="trial budgets (default 64)")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--work-dir", default=None, help="tuning databases (default: a temp dir; never the shared cache)")
    p.add_argument("--layouts", nargs="+", default=None, help="convolution layouts to tune and compare "
                   "(NCHW, NHWC; default: the target's default layout only)")
    p.add_argument("--profile", action="store_true", help="per-call VM profile of the tuned models")
    p.add_argument("--threads-ab", action="store_true", help="time the tuned libraries with 1 thread vs all cores")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--docs-from", nargs="+", default=None, help="render these --json files (no benchmark)")
    p.add_argument("--write-docs", action="store_true", help=f"replace the measured block in {DOCS}")
    args = p.parse_args(argv)

    if args.docs_from:
        results = [json.load(open(f)) for f in args.docs_from]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            work_dir = args.work_dir or os.path.join(tmp, "tune")
            if args.case:
                models = _case_models(args.case, tmp, args.variants)
            elif args.models:
                models = [(os.path.splitext(os.path.basename(m))[0], m) for m in args.models]
            else:
                models = _default_models(tmp)
            res = run_benchmark(models, args.target, sorted(args.trials), args.repeat, work_dir,
                                profile=args.profile, ab=args.threads_ab, layouts=args.layouts, log=lambda s: print(s, file=sys.stderr, flush=True))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1, default=str)
        results = [res]
    text = format_markdown(results)
    print(text)
    if args.write_docs:
        write_docs(text)
        print(f"wrote {DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
