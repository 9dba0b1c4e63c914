#!/usr/bin/python3
"""Writes the model card (README.md) of a trained model directory from what the training and
the checks measured: training_report.json (train.py), corpus_stats.json and
corpus_manifest.tsv (prepare_corpus.sh), runtime_check.json (check_runtime.py). Standard
library only.

  tools/train_tiny/model_card.py --model models/tiny-english [--other-run LABEL=REPORT.json ...]
"""
import argparse
import csv
import json
import pathlib

# Licences as stated in each package's debian/copyright.
LICENCES = {
    "bible-kjv-text": "KJV text: public domain (copyright expired)",
    "fortunes": "BSD (fortune-mod); quotations by many authors",
    "dict-devil": "public domain (Bierce, 1911)",
    "jargon-text": "public domain",
    "gnu-standards": "GFDL-1.3+",
    "debian-handbook": "GPL-2+ or CC-BY-SA-3.0",
    "debian-reference-en": "GPL-2+",
    "perl-doc": "GPL-1+ or Artistic",
    "python3.11-doc": "PSF License",
    "linux-doc-6.1": "GPL-2",
    "dict-gcide": "GPL-2+ (from Webster's 1913, public domain, and WordNet)",
}
WHAT = {
    "bible-kjv-text": "King James Bible, one document per chapter (decoded with `bible` from bible-kjv)",
    "fortunes": "fortune cookies (no offensive set, no ascii-art), 25 per document",
    "dict-devil": "The Devil's Dictionary, 20 entries per document",
    "jargon-text": "The Jargon File 4.4.7, cut at paragraphs into ~6000-character documents",
    "gnu-standards": "GNU Coding Standards and GNU Maintainers Information (plain text)",
    "debian-handbook": "The Debian Administrator's Handbook, English HTML pages as text",
    "debian-reference-en": "Debian Reference, English HTML chapters as text",
    "perl-doc": "perl's pod pages through pod2text",
    "python3.11-doc": "Python 3.11 documentation, reStructuredText sources",
    "linux-doc-6.1": "Linux 6.1 documentation, reStructuredText sources (translations/ left out)",
    "dict-gcide": "GCIDE dictionary entries, markup stripped, every 2nd group of 40 entries",
}


def fmt(x, digits=3):
    return f"{x:,.{digits}f}"


def code_block(text):
    return "```text\n" + text.replace("```", "'''") + "\n```"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=pathlib.Path)
    ap.add_argument("--other-run", action="append", default=[], help="LABEL=training_report.json of another run")
    ap.add_argument("--note", action="append", default=[], help="a sentence about this run for the Training section")
    args = ap.parse_args()
    model = args.model
    report = json.loads((model / "training_report.json").read_text(encoding="utf-8"))
    stats = json.loads((model / "corpus_stats.json").read_text(encoding="utf-8"))
    with open(model / "corpus_manifest.tsv", encoding="utf-8") as f:
        versions = {row["package"]: row for row in csv.DictReader(f, delimiter="\t")}
    check_path = model / "runtime_check.json"
    check = json.loads(check_path.read_text(encoding="utf-8")) if check_path.exists() else None

    c = report["model"]["config"]
    tr, ev, env, data = report["training"], report["evaluation"], report["environment"], report["data"]
    size = report["model"]["safetensors_bytes"]
    heldout = {r["context"]: r for r in ev["heldout"]}
    out = []
    w = out.append

    w(f"# {model.name}: squat-serve's default model\n")
    w(f"A {report['model']['parameters'] / 1e6:.1f}M-parameter Llama-architecture model trained from scratch in "
      f"{tr['wall_seconds'] / 60:.1f} minutes on one {env.get('gpu', env['device'])}, on {stats['totals']['train_chars'] / 1e6:.0f} million "
      "characters of English text from Debian packages, with its own byte-level BPE tokenizer. `make run` serves it. "
      "It writes recognisable English in the styles of its corpus (King James Bible, technical "
      "documentation, dictionary entries, fortune cookies); it knows little and repeats itself. It exists so "
      "that the server, the KV-cache formats and the evaluation tools have a real model with real attention "
      "patterns to work on, small enough to ship in the repository and to run on a CPU.\n")

    w("## Files\n")
    w("| file | what |\n| --- | --- |")
    w(f"| `model.safetensors` | weights, float16, Hugging Face tensor names, lm_head tied to the embeddings ({size:,} bytes) |")
    w("| `config.json`, `generation_config.json` | `LlamaForCausalLM` configuration |")
    w("| `tokenizer.json`, `tokenizer_config.json` | byte-level BPE tokenizer (HF `tokenizers` format) |")
    w("| `training_report.json` | everything train.py measured (arguments, loss curve, evaluation, samples, token ids) |")
    w("| `corpus_manifest.tsv`, `corpus_stats.json` | the Debian packages (version, .deb SHA-256) and the documents taken from each |")
    w("| `runtime_check.json` | the comparison with squat-serve's C++ runtime (below) |\n")

    w("## Architecture\n")
    w("| | |\n| --- | --- |")
    w("| architecture | Llama (`LlamaForCausalLM`): RMSNorm, rotary embeddings, SwiGLU MLP, grouped-query attention |")
    w(f"| layers | {c['num_hidden_layers']} |")
    w(f"| hidden size | {c['hidden_size']} |")
    w(f"| attention | {c['num_attention_heads']} query heads, {c['num_key_value_heads']} KV heads "
      f"({c['num_attention_heads'] // c['num_key_value_heads']} query heads per KV head), head_dim {c['head_dim']} |")
    w(f"| MLP intermediate size | {c['intermediate_size']} |")
    w(f"| vocabulary | {c['vocab_size']} (byte-level BPE; `<|begin_of_text|>` = {report['tokenizer']['bos_id']}, "
      f"`<|end_of_text|>` = {report['tokenizer']['eos_id']}) |")
    w(f"| context | {c['max_position_embeddings']} tokens (trained at this length), rope_theta {c['rope_theta']:g} |")
    w(f"| parameters | {report['model']['parameters']:,} (embeddings tied with the output layer) |")
    w(f"| weights file | {size / 1e6:.2f} MB float16 |\n")
    w("Every prompt the server tokenizes starts with `<|begin_of_text|>` (the tokenizer's template); "
      "documents in training were `<|begin_of_text|> text <|end_of_text|>`, packed back to back.\n")

    w("## Training data\n")
    w("Built by `tools/train_tiny/prepare_corpus.sh` (Debian bookworm; downloads the packages with "
      "`apt-get download` and unpacks them, nothing is installed). Each source is cut into documents in a "
      f"fixed order; **held out**: {stats['heldout_rule']} (the same slice on every run, from every source).\n")
    w("| package | version | licence | text | train docs | train chars | held-out chars |")
    w("| --- | --- | --- | --- | ---: | ---: | ---: |")
    for source, s in stats["sources"].items():
        v = versions.get(source, {}).get("version", "?")
        w(f"| {source} | {v} | {LICENCES.get(source, '?')} | {WHAT.get(source, '')} | {s['train_docs']:,} | "
          f"{s['train_chars']:,} | {s['heldout_chars']:,} |")
    t = stats["totals"]
    w(f"| **total** | | | | {t['train_docs']:,} | {t['train_chars']:,} | {t['heldout_chars']:,} |\n")
    w(f"`bible-kjv` {versions.get('bible-kjv', {}).get('version', '?')} (GPL-2+) and `fortunes-min` only serve the "
      "extraction (the KJV reader; the fortunes dependency). Licences: the Bible, The Devil's Dictionary and the "
      "Jargon File are public domain; the rest is free software documentation under the licences listed "
      "(GPL-2, GPL-2+, GFDL, CC-BY-SA, Artistic, PSF). Whether trained weights are a derivative work of their "
      "training text is unsettled; treat this model as carrying the most restrictive of those terms (GPL-2) "
      "and as a test fixture, not a product.\n")
    w(f"Tokenized: {data['train_tokens']:,} training tokens, {data['heldout_tokens']:,} held-out tokens "
      f"({data['train_chars_per_token']:.2f} characters per token). The tokenizer was trained with HF "
      f"`tokenizers` {env.get('tokenizers')} on an even sample of {report['tokenizer']['trained_on_chars']:,} "
      "training characters (GPT-2 byte-level pre-tokenizer, all 256 bytes in the base alphabet, so no input "
      "is unknown).\n")

    w("## Training\n")
    w("```sh\n" + "tools/train_tiny/prepare_corpus.sh .gpu_in/corpus      # here, Debian, as root\n"
      + f"python3 {report['command']}   # on the GPU machine\n```\n")
    a = report["args"]
    w("| | |\n| --- | --- |")
    w(f"| hardware | one {env.get('gpu')} |")
    w(f"| software | Python {env['python']}, torch {env['torch']}, tokenizers {env.get('tokenizers')}, "
      f"transformers {env.get('transformers')} |")
    w(f"| optimizer | AdamW (β 0.9/0.95, weight decay {a['weight_decay']}), peak LR {a['lr']:g} after "
      f"{a['warmup_steps']} warmup steps, cosine to {a['min_lr_ratio']:g}× over the wall-clock budget, "
      "gradient clipping 1.0 |")
    w(f"| batch | {a['batch_size']} random windows of {a['context']} tokens = {tr['batch_tokens']:,} tokens per step |")
    w(f"| precision | bf16 autocast, fp32 master weights, `torch.compile` ({'on' if tr['compiled'] else 'off'}); saved in float16 |")
    w(f"| timed training | {tr['wall_seconds']:.0f} s, {tr['steps']:,} steps, {tr['tokens']:,} tokens "
      f"({tr['epochs']:.1f} epochs), {tr['tokens_per_second']:,} tokens/s |")
    w(f"| whole script | {report['total_seconds']:.0f} s (corpus, tokenizer, smoke phase, training, evaluation) |")
    w(f"| final training loss | {tr['final_loss']} |\n")
    for note in args.note:
        w(note + "\n")
    monitor = [p for p in tr["curve"] if "heldout_loss" in p]
    if monitor:
        w("Held-out loss watched during training (16 evenly spaced 2048-token windows): " +
          ", ".join(f"{p['heldout_loss']} at {p['seconds']:.0f} s" for p in monitor) + ".\n")

    w("## Held-out perplexity\n")
    w(f"Scored by {ev['scorer']} loading this directory, on the first "
      f"{heldout[2048]['scored_tokens'] + heldout[2048]['windows']:,} held-out tokens cut into non-overlapping "
      "windows; every window starts cold, so longer windows give more tokens a long context.\n")
    w("| context | windows | scored tokens | perplexity | bits per byte |")
    w("| ---: | ---: | ---: | ---: | ---: |")
    for ctx in sorted(heldout):
        r = heldout[ctx]
        w(f"| {ctx} | {r['windows']} | {r['scored_tokens']:,} | {r['perplexity']:.3f} | {r['bits_per_byte']:.4f} |")
    w("")
    if "own_vs_transformers_max_abs_logit_diff" in ev:
        w(f"The training code's own forward pass and transformers' agree on this checkpoint to "
          f"{ev['own_vs_transformers_max_abs_logit_diff']:.1e} in the logits (float32, 512 tokens).\n")
    for other in args.other_run:
        label, path = other.split("=", 1)
        o = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
        oh = {r["context"]: r for r in o["evaluation"]["heldout"]}
        w(f"{label}: same corpus and shape, {o['training']['wall_seconds']:.0f} s of training, "
          f"{o['training']['epochs']:.1f} epochs, held-out perplexity "
          + ", ".join(f"{oh[k]['perplexity']:.3f} at {k}" for k in sorted(oh)) + ".\n")

    w("## Samples\n")
    s = ev["sampling"]
    w(f"From transformers `generate` on the GPU machine, {a['sample_tokens']} new tokens after the prompt "
      f"(which starts with `<|begin_of_text|>`): greedy, and sampled with temperature {s['temperature']}, "
      f"top_p {s['top_p']}, seed {s['seed']}. Verbatim; the prompt is in brackets.\n")
    for sample in ev["samples"]:
        w(f"**{sample['prompt']}**, greedy:\n")
        w(code_block(f"[{sample['prompt']}]{sample['greedy_text']}") + "\n")
        w(f"**{sample['prompt']}**, sampled:\n")
        w(code_block(f"[{sample['prompt']}]{sample['sampled_text']}") + "\n")

    if check:
        w("## Checked with squat-serve's C++ runtime\n")
        w("`tools/train_tiny/check_runtime.py --model models/tiny-english --build build/release` starts "
          "`squat-server` on this directory (CPU) and compares with the GPU machine's reference above:\n")
        same = sum(1 for t in check["tokenizer"] if t["same_ids"])
        tokens = sum(t["tokens"] for t in check["tokenizer"])
        w(f"- Tokenizer: {same} of {len(check['tokenizer'])} texts give the same ids as HF `tokenizers` "
          f"({tokens:,} tokens: the sample prompts and the first 1500 characters of one held-out document "
          "per source).")
        w("- Greedy continuation, tokens identical to transformers' from the start:\n")
        w("| prompt | fp16 KV cache | squat 2-bit KV cache (server default) |")
        w("| --- | ---: | ---: |")
        for g in check["greedy"]:
            w(f"| {g['prompt']} | {g['fp16_matching_prefix']}/{g['reference_tokens']} | "
              f"{g['squat_default_matching_prefix']}/{g['reference_tokens']} |")
        w("")
        first = check["greedy"][0]
        w(f"`squat-cli generate \"{first['prompt']}\" --max-tokens {first['reference_tokens']} --temperature 0` "
          "against squat-server with its default flags, as `make run` starts it (squat 2-bit keys and values):\n")
        w(code_block(f"[{first['prompt']}]{first['squat_default_text']}") + "\n")

    w("## Retraining\n")
    w("1. `tools/train_tiny/prepare_corpus.sh .gpu_in/corpus` on Debian bookworm as root (219 s on a "
      "2-core machine; writes train/held-out `.jsonl.xz`, `stats.json`, `manifest.tsv`; a second run gave "
      "byte-identical files).")
    w("2. On a CUDA machine with torch, tokenizers and transformers: "
      "`python3 tools/train_tiny/train.py --corpus .gpu_in/corpus --out DIR --minutes M` "
      "(`--bundle OUT` also packs DIR into pieces of 15 MiB).")
    w("3. Copy `corpus_manifest.tsv` and `corpus_stats.json` from the corpus folder into DIR, run "
      "`tools/train_tiny/check_runtime.py --model DIR --build build/release --out DIR/runtime_check.json`, then "
      "`tools/train_tiny/model_card.py --model DIR`.")
    (model / "README.md").write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"wrote {model / 'README.md'}")


if __name__ == "__main__":
    main()
