#!/usr/bin/env python3
"""Summary of a gpu_bench.sh run: reads the tools' JSON in the work dir and writes summary.json and
summary.md (tables ready for docs/benchmarks.md) into the output dir. Standard library only.

  summarize.py --work BUILD/bench_work --out OUTDIR [--bandwidth B --peak-flops F]
"""
import argparse
import glob
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import floor  # noqa: E402

GIB = 2**30


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"{os.path.basename(path)}: {e}"}


def fmt(value, spec=".1f", none="–"):
    return none if value is None else format(value, spec)


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def step_ms(point):
    step, _, source = floor.measured_step(point)
    return (step * 1e3 if step else None), source


def by_format(work, prefix):
    runs = {}
    for path in sorted(glob.glob(os.path.join(work, f"{prefix}_*.json"))):
        runs[os.path.basename(path)[len(prefix) + 1:-5]] = load(path)
    return runs


def best(points):
    ok = [p for p in points if p.get("status") in ("ok", "preemption_heavy") and p.get("throughput_tok_s")]
    return max(ok, key=lambda p: p["throughput_tok_s"]) if ok else None


def throughput_section(work, summary, md):
    hf = load(os.path.join(work, "hf.json"))
    ours = by_format(work, "tp7b")
    summary["hf"] = hf
    summary["throughput_7b"] = ours
    md += ["## (a) Throughput, Llama-2-7B shape (random fp16 weights), prompt 160 + 338 generated", ""]
    md += ["Throughput = (prompt + generated) x batch / wall time (the shared README's convention); "
           "generated tok/s = generated tokens / wall time.", ""]
    md += ["HF transformers `generate` (fp16, sdpa, greedy, `min_new_tokens = max_new_tokens`):", ""]
    if hf.get("skipped") or hf.get("error"):
        md += [f"not measured: {hf.get('skipped') or hf.get('error')}", ""]
    rows = [[p["batch"], p["status"], fmt(p.get("wall_s")), fmt(p.get("throughput_tok_s"), ".0f"),
             fmt(p.get("gen_throughput_tok_s"), ".0f"),
             fmt((p.get("max_memory_allocated_bytes") or 0) / GIB if p.get("max_memory_allocated_bytes") else None)]
            for p in hf.get("points", [])]
    md += table(["batch", "status", "wall s", "tok/s", "generated tok/s", "peak GiB (max_memory_allocated)"], rows) + [""]

    md += ["Ours (`squat-throughput`, all requests submitted at once):", ""]
    rows = []
    for name, run in ours.items():
        if "points" not in run:
            rows.append([name, "–", run.get("error", "no result"), *["–"] * 9])
            continue
        weights = run["model"]["weight_bytes"]
        for p in run["points"]:
            if p.get("status") == "skipped":
                rows.append([name, p["batch"], f"skipped: {p.get('message', '')}", *["–"] * 9])
                continue
            ms, source = step_ms(p)
            gpu = (p.get("gpu_memory") or {})
            process = gpu.get("process_mib")
            rows.append([name, p["batch"], p["status"], fmt(p["wall_s"]), fmt(p["throughput_tok_s"], ".0f"),
                         fmt(p["gen_throughput_tok_s"], ".0f"), fmt(p["prefill_phase_s"], ".2f"),
                         f"{fmt(ms, '.2f')} ({source})" if ms else "–", p["preemptions"],
                         fmt((weights + p["kv_pool"]["peak_used_bytes"]) / GIB),
                         fmt(process / 1024 if process else None)])
    md += table(["format", "batch", "status", "wall s", "tok/s", "generated tok/s", "prefill phase s",
                 "decode step ms", "preemptions", "weights + KV peak GiB", "process GPU GiB"], rows) + [""]

    hf_best = best(hf.get("points", []))
    bests = {name: best(run.get("points", [])) for name, run in ours.items()}
    ratios = {}
    squat = bests.get("squat-2")
    if squat and hf_best:
        ratios["squat-2 / HF fp16 best"] = squat["throughput_tok_s"] / hf_best["throughput_tok_s"]
    if squat and bests.get("fp16"):
        ratios["squat-2 / our fp16 best"] = squat["throughput_tok_s"] / bests["fp16"]["throughput_tok_s"]
    summary["throughput_7b_best"] = {"hf": hf_best, **bests, "ratios": ratios}
    rows = [["HF fp16", hf_best["batch"], fmt(hf_best["throughput_tok_s"], ".0f"),
             fmt(hf_best["max_memory_allocated_bytes"] / GIB if hf_best.get("max_memory_allocated_bytes") else None)]
            ] if hf_best else []
    for name, p in bests.items():
        if p:
            weights = ours[name]["model"]["weight_bytes"]
            rows.append([name, p["batch"], fmt(p["throughput_tok_s"], ".0f"),
                         fmt((weights + p["kv_pool"]["peak_used_bytes"]) / GIB)])
    md += ["Best of each:", ""] + table(["system", "batch", "tok/s", "peak GiB at that batch"], rows) + [""]
    targets = {"squat-2 / HF fp16 best": 10.0, "squat-2 / our fp16 best": 2.5}
    for key, target in targets.items():
        value = ratios.get(key)
        md.append(f"- {key}: {fmt(value, '.2f')}x (target >= {target}x: "
                  f"{'met' if value and value >= target else 'not met' if value else 'not measured'})")
    md.append("")


def decode_section(work, summary, md, args):
    runs = sorted(glob.glob(os.path.join(work, "dec8b_*.json")))
    hw = os.path.join(work, "hf.json")
    measured = (load(hw).get("bandwidth") or {}) if os.path.exists(hw) else {}
    bandwidth = args.bandwidth or measured.get("bandwidth_bytes_per_s")
    peak = args.peak_flops or measured.get("fp16_gemm_flops_per_s")
    source = "nominal (--bandwidth/--peak-flops)" if args.bandwidth else "measured in this run (hf_generate_bench.py)"
    md += ["## (b) Decode step time vs the floor, Llama-3.1-8B shape (random fp16 weights)", ""]
    if measured:
        md += [f"Measured: copy {measured['copy_bytes_per_s'] / 1e12:.2f} TB/s (read + written), reduction read "
               f"{measured['read_bytes_per_s'] / 1e12:.2f} TB/s, fp16 GEMM {measured['fp16_gemm_flops_per_s'] / 1e12:.0f} "
               f"TFLOP/s ({measured['gemm_n']}^3). The floor uses the larger bandwidth.", ""]
    if not bandwidth or not peak:
        md += ["no bandwidth measurement: floor not computed", ""]
        summary["decode_8b"] = {"error": "no bandwidth measurement"}
        return
    rows = floor.compare_runs(runs, bandwidth, peak, args.residual_tokens, None)
    summary["decode_8b"] = {"bandwidth_bytes_per_s": bandwidth, "peak_flops_per_s": peak, "source": source, "rows": rows}
    md += floor.markdown(rows, bandwidth, peak, source).splitlines() + [""]
    largest = {}
    for r in rows:
        if "error" in r:
            continue
        key = (r["format"], r["prompt_tokens"])
        if key not in largest or r["batch"] > largest[key]["batch"]:
            largest[key] = r
    for (name, prompt), r in sorted(largest.items()):
        md.append(f"- {name}, prompt {prompt}: largest batch measured {r['batch']}: step / floor "
                  f"{r['ratio']:.2f} (target <= 1.3: {'met' if r['ratio'] <= 1.3 else 'not met'})")
    md.append("")
    # (c) capacity at the longest context: each run's own default format (its pool is paged for it)
    cap_rows = []
    summary["capacity"] = []
    for path in runs:
        run = load(path)
        for c in run.get("capacity", []):
            if c.get("is_default"):
                summary["capacity"].append(c)
                workspace = run["model"].get("workspace_bytes") or 0
                cap_rows.append([c["format"], c["context"], fmt(c["bytes_per_token"] / 1024, ".1f"),
                                 fmt(run["kv_pool"]["total_bytes"] / GIB), fmt(workspace / GIB if workspace > 0 else None),
                                 c["capacity_tokens"], c["max_sequences_naive"], c["max_sequences_estimate"]])
    # Formats without a run of their own: GetModelInfo's figure from another run's pool (paged
    # for that run's format, so only the naive count).
    measured_formats = {c["format"] for c in summary["capacity"]}
    for path in runs:
        for c in load(path).get("capacity", []):
            if c["format"] not in measured_formats and c["format"] in ("fp16", "kivi-2", "squat-2"):
                measured_formats.add(c["format"])
                cap_rows.append([c["format"] + " (pool paged for another format)", c["context"],
                                 fmt(c["bytes_per_token"] / 1024, ".1f"), fmt(load(path)["kv_pool"]["total_bytes"] / GIB),
                                 "–", c["capacity_tokens"], c["max_sequences_naive"], "–"])
    md += ["## (c) Capacity (Llama-3.1-8B shape)", "",
           "Pool as sized by the run (see the commands; the engine sets aside the activation workspace of "
           "--max-num-batched-tokens first); naive = capacity_tokens / context (GetModelInfo's "
           "figure); estimate = pool bytes / (context x bytes per token + each sequence's fixed part: "
           "residual window, SQuat state, page rounding), less the 1 % the scheduler keeps free.", ""]
    md += table(["format", "context", "KiB/token", "pool GiB", "workspace GiB", "capacity tokens",
                 "max sequences (naive)", "max sequences (estimate)"], cap_rows) + [""]


def e2e_section(work, summary, md):
    runs = by_format(work, "e2e")
    summary["e2e"] = runs
    md += ["## (d) End to end through gRPC (squat-server + squat-bench, Llama-2-7B shape)", ""]
    rows = []
    for name, r in runs.items():
        if "latency_s" not in r:
            rows.append([name, r.get("error", "no result"), *["–"] * 6])
            continue
        lat = r["latency_s"]
        ms = lambda d, k: fmt(d.get(k, 0) * 1e3, ".1f")  # noqa: E731
        rows.append([name, r["options"].get("rate"), f"{r['completed']}/{r['requests']}",
                     " / ".join(ms(lat["ttft"], k) for k in ("p50", "p90", "p99")),
                     " / ".join(ms(lat["itl"], k) for k in ("p50", "p90", "p99")),
                     fmt(r["output_tokens_per_s"], ".0f"), fmt(r["duration_s"]),
                     ", ".join(f"{v} {k}" for k, v in r.get("outcomes", {}).items())])
    md += table(["format", "rate req/s", "completed", "TTFT p50 / p90 / p99 ms", "ITL p50 / p90 / p99 ms",
                 "output tok/s", "duration s", "outcomes"], rows) + [""]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--bandwidth", type=float, help="nominal bytes/s (CPU dry run)")
    p.add_argument("--peak-flops", type=float, help="nominal FLOP/s (CPU dry run)")
    p.add_argument("--residual-tokens", type=int, default=32)
    args = p.parse_args(argv)
    work = args.work
    summary = {"mode": args.mode}
    try:
        summary["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                           text=True).stdout.strip()
        summary["dirty"] = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True,
                                               text=True).stdout.strip())
    except OSError:
        pass
    stages = []
    if os.path.exists(os.path.join(work, "stages.jsonl")):
        with open(os.path.join(work, "stages.jsonl")) as f:
            stages = [json.loads(line) for line in f if line.strip()]
    summary["stages"] = stages
    hf = load(os.path.join(work, "hf.json")) if os.path.exists(os.path.join(work, "hf.json")) else {}
    md = ["# GPU benchmarks (issue 6): run summary", "",
          f"Mode {args.mode}; commit {summary.get('commit', '?')}{' (uncommitted changes)' if summary.get('dirty') else ''}; "
          f"GPU {hf.get('gpu') or '–'}; versions {hf.get('versions') or '–'}.", ""]
    md += ["## Stages", ""] + table(["stage", "status", "seconds", "note"],
                                    [[s["stage"], s["status"], s["seconds"], s["note"]] for s in stages]) + [""]
    checkpoints = [load(path) for path in sorted(glob.glob(os.path.join(work, "checkpoint_*.json")))]
    summary["checkpoints"] = checkpoints
    md += ["## Checkpoint generator (squat-make-checkpoint)", ""]
    md += table(["checkpoint", "preset", "exit", "seconds", "GiB", "GiB/s", "threads", "reused"],
                [[c.get("name"), c.get("preset"), c.get("rc"), c.get("seconds"), fmt(c.get("bytes", 0) / GIB, ".2f"),
                  fmt(c["bytes"] / GIB / c["seconds"] if c.get("seconds") else None, ".2f"), c.get("threads"),
                  c.get("reused")] for c in checkpoints]) + [""]
    sections = [("throughput", lambda: throughput_section(work, summary, md)),
                ("decode", lambda: decode_section(work, summary, md, args)),
                ("e2e", lambda: e2e_section(work, summary, md))]
    for name, section in sections:
        try:
            section()
        except Exception as e:  # noqa: BLE001 - one broken input must not lose the rest
            md += [f"({name} section failed: {type(e).__name__}: {e})", ""]
            summary[f"{name}_error"] = f"{type(e).__name__}: {e}"
    if os.path.exists(os.path.join(work, "commands.txt")):
        with open(os.path.join(work, "commands.txt")) as f:
            md += ["## Commands (as run, in order)", "", "```sh", f.read().rstrip(), "```", ""]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
        f.write("\n")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
