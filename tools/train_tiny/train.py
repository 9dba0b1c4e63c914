#!/usr/bin/env python3
"""Trains the small English Llama that squat-serve ships as its default model.

  python3 tools/train_tiny/train.py --corpus .gpu_in/corpus --out DIR [--minutes 5] [--bundle OUT]

Needs torch (CUDA), tokenizers, numpy; transformers for the evaluation (the training model is
the fallback scorer). No network. The corpus is what tools/train_tiny/prepare_corpus.sh writes.

Steps: train a byte-level BPE tokenizer on the training split; encode both splits into one
token stream each (<|begin_of_text|> doc <|end_of_text|> ...); build the Llama (shape printed
with its parameter count and float16 size before anything runs); a short smoke phase
(compile, a few steps, write + reload through transformers) whose weights are then thrown
away; the timed training on random 2048-token windows (AdamW, bf16 autocast, warmup then
cosine decay over the wall-clock budget); write the HF directory (config.json,
generation_config.json, model.safetensors in float16, tokenizer.json, tokenizer_config.json);
held-out perplexity at 512/1024/2048 tokens and greedy + sampled continuations of a few
prompts through transformers; DIR/training_report.json and DIR/train.log. --bundle packs the
directory into OUT/model.tar.partNN pieces (the device tool returns files of 16 MiB at most).
"""
import argparse
import copy
import io
import json
import lzma
import math
import os
import pathlib
import platform
import shutil
import sys
import tarfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bpe_tokenizer  # noqa: E402
import hf_checkpoint  # noqa: E402
import lm_eval  # noqa: E402
from tiny_llama import TinyLlama, TinyLlamaConfig, parameter_count  # noqa: E402

PROMPTS = [
    "The LORD said unto Moses",
    "In the beginning",
    "The kernel",
    "A dictionary is",
    "Python is a programming language",
    "Once upon a time",
]
SAMPLING = {"seed": 7, "temperature": 0.8, "top_p": 0.95}
EVAL_CONTEXTS = (512, 1024, 2048)

START = time.time()
LOG_FILE = None


def log(message):
    line = f"[{time.time() - START:7.1f}s] {message}"
    print(line, flush=True)
    if LOG_FILE is not None:
        with open(LOG_FILE, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True, type=pathlib.Path, help="folder with train/heldout .jsonl.xz")
    ap.add_argument("--out", required=True, type=pathlib.Path, help="model directory to write")
    ap.add_argument("--bundle", type=pathlib.Path, help="also pack the model into this folder, in pieces")
    ap.add_argument("--minutes", type=float, default=5.0, help="wall-clock budget of the timed training")
    ap.add_argument("--deadline-seconds", type=float, default=510.0,
                    help="the whole script's budget: training ends early to leave --reserve-seconds")
    ap.add_argument("--reserve-seconds", type=float, default=60.0, help="kept for saving and evaluation")
    ap.add_argument("--smoke-seconds", type=float, default=20.0, help="0 skips the smoke phase")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--tokenizer-chars", type=int, default=40_000_000,
                    help="train the tokenizer on an even sample of this many characters")
    ap.add_argument("--hidden-size", type=int, default=512)
    ap.add_argument("--intermediate-size", type=int, default=896)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--context", type=int, default=2048, help="training sequence length")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--batch-size", type=int, default=64, help="sequences per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--eval-tokens", type=int, default=1 << 19, help="held-out tokens scored per context")
    ap.add_argument("--sample-tokens", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap.parse_args(argv)


# ---- data ----

def read_documents(path):
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def even_sample(texts, max_chars):
    total = sum(len(t) for t in texts)
    stride = max(1, math.ceil(total / max_chars))
    return texts[::stride]


def encode_stream(tokenizer, texts, bos_id, eos_id, batch=256):
    """One int32 stream: <bos> doc <eos> for every document, in order."""
    pieces = []
    framing_bos, framing_eos = np.array([bos_id], np.int32), np.array([eos_id], np.int32)
    for i in range(0, len(texts), batch):
        for encoding in tokenizer.encode_batch(texts[i:i + batch], add_special_tokens=False):
            pieces += [framing_bos, np.asarray(encoding.ids, dtype=np.int32), framing_eos]
    return np.concatenate(pieces)


def token_byte_lengths(tokenizer, vocab_size, special_ids):
    """Bytes of text each id stands for: a byte-level token string has one character per byte."""
    lengths = np.zeros(vocab_size, dtype=np.int64)
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i)
        if token is not None and i not in special_ids:
            lengths[i] = len(token)
    return lengths


# ---- training ----

def make_optimizer(model, args, device):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.startswith("cuda") else {}
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, **extra)


def learning_rate(args, step, progress):
    """Linear warmup by steps, then cosine decay to min_lr over the wall-clock progress."""
    warm = min(1.0, (step + 1) / args.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return args.lr * warm * (args.min_lr_ratio + (1.0 - args.min_lr_ratio) * cosine)


class WindowSampler:
    """Random (input, target) windows of the training stream, drawn on the device."""

    def __init__(self, stream, context, batch_size, device, seed):
        self.data = torch.from_numpy(stream.astype(np.int64)).to(device)
        self.offsets = torch.arange(context + 1, device=device)
        self.context, self.batch_size = context, batch_size
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self):
        starts = torch.randint(0, self.data.numel() - self.context - 1, (self.batch_size,),
                               device=self.data.device, generator=self.generator)
        window = self.data[starts[:, None] + self.offsets]
        return window[:, :-1], window[:, 1:]


def monitor_windows(heldout_stream, context, device, count=16):
    """Evenly spaced held-out windows (every source), scored during training to watch overfitting."""
    starts = np.linspace(0, heldout_stream.size - context, count).astype(np.int64)
    windows = np.stack([heldout_stream[s:s + context] for s in starts]).astype(np.int64)
    return torch.from_numpy(windows).to(device)


def make_loss_fn(model, device, compile_model):
    autocast_dtype = torch.bfloat16

    def loss_fn(x, y):
        with torch.autocast(device_type=device.split(":")[0], dtype=autocast_dtype):
            logits = model(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    if compile_model:
        return torch.compile(loss_fn)
    return loss_fn


@torch.no_grad()
def heldout_loss(model, windows, device):
    model.eval()
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16):
        logits = model(windows)
    loss = F.cross_entropy(logits.float()[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    model.train()
    return loss.item()


def run_training(model, loss_fn, sampler, args, device, seconds, monitor_windows, label, curve):
    """Steps until `seconds` of wall clock have passed. Returns (steps, tokens, wall seconds)."""
    optimizer = make_optimizer(model, args, device)
    model.train()
    begin = time.time()
    step, tokens, last_log, last_eval = 0, 0, begin, begin
    while True:
        now = time.time()
        progress = (now - begin) / seconds
        if progress >= 1.0:
            break
        lr = learning_rate(args, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = sampler()
        loss = loss_fn(x, y)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens += x.numel()
        if step == 1 or time.time() - last_log >= 10.0:
            loss_value = loss.item()
            elapsed = time.time() - begin
            entry = {"step": step, "seconds": round(elapsed, 1), "tokens": tokens, "loss": round(loss_value, 4),
                     "lr": lr, "grad_norm": round(float(grad_norm), 3)}
            if time.time() - last_eval >= 30.0 and monitor_windows is not None:
                entry["heldout_loss"] = round(heldout_loss(model, monitor_windows, device), 4)
                last_eval = time.time()
            curve.append(entry)
            log(f"{label} step {step} loss {loss_value:.4f} lr {lr:.2e} |g| {float(grad_norm):.2f} "
                f"{tokens / max(elapsed, 1e-9):,.0f} tok/s" +
                (f" heldout {entry['heldout_loss']:.4f}" if "heldout_loss" in entry else ""))
            last_log = time.time()
            if not math.isfinite(loss_value):
                raise RuntimeError(f"loss is {loss_value} at step {step}")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.time() - begin
    if step and curve[-1]["step"] != step:
        curve.append({"step": step, "seconds": round(wall, 1), "tokens": tokens, "loss": round(loss.item(), 4),
                      "lr": lr, "grad_norm": round(float(grad_norm), 3)})
    return step, tokens, wall


# ---- evaluation ----

def evaluate(model_dir, own_model, heldout_stream, token_bytes, tokenizer, args, device, eos_id, quick=False,
             tokenizer_cases=()):
    """Perplexities and samples through transformers; the training model when that fails."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # scores in true float32 (training uses TF32)
    try:
        return evaluate_float32(model_dir, own_model, heldout_stream, token_bytes, tokenizer, args, device, eos_id,
                                quick, tokenizer_cases)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32  # a changed flag would also recompile the training step


def evaluate_float32(model_dir, own_model, heldout_stream, token_bytes, tokenizer, args, device, eos_id, quick,
                     tokenizer_cases):
    result = {"scorer": None}
    own_fn = lambda ids: own_model(ids)  # noqa: E731
    stream = torch.from_numpy(heldout_stream.astype(np.int64)).to(device)
    token_bytes_t = torch.from_numpy(token_bytes).to(device)
    eval_tokens = min(stream.numel(), 2048 * 4 if quick else args.eval_tokens) // 2048 * 2048
    hf_model = None
    try:
        hf_model = lm_eval.load_hf_model(str(model_dir), device)
        scorer, scorer_name = lm_eval.hf_logits_fn(hf_model), "transformers LlamaForCausalLM (float32)"
        with torch.no_grad():
            window = stream[:512].view(1, -1)
            diff = (scorer(window).float() - own_fn(window).float()).abs().max().item()
        result["own_vs_transformers_max_abs_logit_diff"] = diff
        log(f"transformers loaded the checkpoint; max |logit diff| vs training model = {diff:.3e}")
    except Exception as error:  # keep the trained model even if transformers disagrees
        result["transformers_error"] = "".join(traceback.format_exception_only(type(error), error)).strip()
        log(f"transformers evaluation unavailable: {result['transformers_error']}")
        scorer, scorer_name = own_fn, "training model (float32 copy of the saved float16 weights)"
    result["scorer"] = scorer_name
    result["heldout"] = [lm_eval.perplexity(scorer, stream, c, eval_tokens, token_bytes_t) for c in EVAL_CONTEXTS]
    for r in result["heldout"]:
        log(f"held-out ctx {r['context']}: ppl {r['perplexity']:.3f}, {r['bits_per_byte']:.4f} bits/byte, "
            f"{r['scored_tokens']} tokens")
    samples = []
    for prompt in (PROMPTS[:1] if quick else PROMPTS):
        ids = tokenizer.encode(prompt, add_special_tokens=True).ids
        entry = {"prompt": prompt, "prompt_ids": ids}
        for kind, sample in (("greedy", None), ("sampled", SAMPLING)):
            n = 5 if quick else args.sample_tokens
            out = None
            if hf_model is not None:
                try:
                    out = lm_eval.hf_generate(hf_model, ids, n, eos_id, sample)
                    entry[f"{kind}_by"] = "transformers generate"
                except Exception as error:
                    entry[f"{kind}_transformers_error"] = repr(error)
                    log(f"transformers generate failed: {error!r}")
            if out is None:
                out = lm_eval.own_generate(own_fn, ids, n, eos_id, device, sample)
                entry[f"{kind}_by"] = "training model"
            entry[f"{kind}_ids"] = out
            entry[f"{kind}_text"] = tokenizer.decode(out, skip_special_tokens=True)
        samples.append(entry)
        log(f"sample {prompt!r}: greedy {entry['greedy_text']!r} | sampled {entry['sampled_text']!r}")
    result["samples"] = samples
    result["tokenizer_cases"] = [{"text": text, "ids": tokenizer.encode(text, add_special_tokens=True).ids}
                                 for text in tokenizer_cases]
    result["sampling"] = SAMPLING
    return result


def float32_copy_of_saved(model):
    """The training model with weights rounded through float16, as written to disk."""
    copy_model = copy.deepcopy(model).float()
    with torch.no_grad():
        for p in copy_model.parameters():
            p.copy_(p.to(torch.float16).float())
    return copy_model.eval()


def write_bundle(model_dir, bundle_dir, piece_bytes=15 << 20):
    """model_dir as an uncompressed tar cut into pieces; `cat model.tar.part* | tar x` restores it."""
    bundle_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(model_dir, arcname=model_dir.name)
    data = buffer.getvalue()
    names = []
    for i in range(0, len(data), piece_bytes):
        name = bundle_dir / f"model.tar.part{i // piece_bytes:02d}"
        name.write_bytes(data[i:i + piece_bytes])
        names.append(name.name)
    for extra in ("training_report.json", "train.log"):
        if (model_dir / extra).exists():
            shutil.copy(model_dir / extra, bundle_dir / extra)
    return names


def environment(device):
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
    for package in ("tokenizers", "transformers", "numpy"):
        try:
            env[package] = __import__(package).__version__
        except Exception:
            env[package] = None
    return env


def main(argv=None, tokenizer_factory=None):
    global LOG_FILE
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    LOG_FILE = args.out / "train.log"
    LOG_FILE.write_text("")
    device = args.device
    torch.manual_seed(args.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report = {"command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]), "args": {
        k: str(v) if isinstance(v, pathlib.Path) else v for k, v in vars(args).items()}}
    report["environment"] = environment(device)
    log(f"environment: {report['environment']}")

    config = TinyLlamaConfig(vocab_size=args.vocab_size, hidden_size=args.hidden_size,
                             intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
                             num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                             head_dim=args.head_dim, max_position_embeddings=args.context,
                             rope_theta=args.rope_theta)
    params = parameter_count(config)
    log(f"model {config.to_dict()}: {params:,} parameters, {params * 2 / 1e6:.2f} MB in float16")

    train_docs = read_documents(args.corpus / "train.jsonl.xz")
    heldout_docs = read_documents(args.corpus / "heldout.jsonl.xz")
    train_texts = [d["text"] for d in train_docs]
    heldout_texts = [d["text"] for d in heldout_docs]
    log(f"corpus: {len(train_texts)} train docs ({sum(map(len, train_texts)):,} chars), "
        f"{len(heldout_texts)} held-out docs ({sum(map(len, heldout_texts)):,} chars)")

    begin = time.time()
    sample = even_sample(train_texts, args.tokenizer_chars)
    if tokenizer_factory is None:
        tokenizer, bos_id, eos_id = bpe_tokenizer.train_tokenizer(sample, args.vocab_size)
    else:
        tokenizer, bos_id, eos_id = tokenizer_factory(sample, args.vocab_size)
    report["tokenizer"] = {"vocab_size": tokenizer.get_vocab_size(), "bos_id": bos_id, "eos_id": eos_id,
                           "trained_on_chars": sum(map(len, sample)), "seconds": round(time.time() - begin, 1)}
    if tokenizer.get_vocab_size() > args.vocab_size:
        raise RuntimeError(f"tokenizer has {tokenizer.get_vocab_size()} tokens, more than {args.vocab_size}")
    if tokenizer.get_vocab_size() < args.vocab_size:  # unused embedding rows; harmless
        log(f"note: tokenizer learned only {tokenizer.get_vocab_size()} of {args.vocab_size} tokens")
    log(f"tokenizer: {report['tokenizer']}")

    begin = time.time()
    train_stream = encode_stream(tokenizer, train_texts, bos_id, eos_id)
    heldout_stream = encode_stream(tokenizer, heldout_texts, bos_id, eos_id)
    token_bytes = token_byte_lengths(tokenizer, args.vocab_size, {bos_id, eos_id})
    report["data"] = {"train_tokens": int(train_stream.size), "heldout_tokens": int(heldout_stream.size),
                      "train_chars_per_token": sum(map(len, train_texts)) / train_stream.size,
                      "encode_seconds": round(time.time() - begin, 1)}
    log(f"encoded: {report['data']}")
    # The first 1500 characters of the first held-out document of each source.
    tokenizer_cases = list({d["source"]: d["text"][:1500] for d in reversed(heldout_docs)}.values())
    del train_docs, train_texts, sample

    model = TinyLlama(config).to(device)
    initial_state = copy.deepcopy(model.state_dict())
    sampler = WindowSampler(train_stream, args.context, args.batch_size, device, args.seed)
    monitor = monitor_windows(heldout_stream, args.context, device)
    compile_model = not args.no_compile and device.startswith("cuda")
    loss_fn = make_loss_fn(model, device, compile_model)

    if args.smoke_seconds > 0:
        smoke = {}
        begin = time.time()
        try:
            x, y = sampler()
            loss_fn(x, y).backward()
        except Exception as error:
            if not compile_model:
                raise
            log(f"torch.compile failed, training eagerly: {error!r}")
            compile_model, loss_fn = False, make_loss_fn(model, device, False)
            x, y = sampler()
            loss_fn(x, y).backward()
        model.zero_grad(set_to_none=True)
        smoke["first_step_seconds"] = round(time.time() - begin, 1)
        smoke["compiled"] = compile_model
        log(f"smoke: first step (compile) {smoke['first_step_seconds']} s")
        curve = []
        steps, tokens, seconds = run_training(model, loss_fn, sampler, args, device, args.smoke_seconds,
                                              monitor, "smoke", curve)
        smoke.update(steps=steps, tokens=tokens, tokens_per_second=round(tokens / seconds),
                     first_loss=curve[0]["loss"], last_loss=curve[-1]["loss"])
        smoke_dir = args.out.parent / (args.out.name + ".smoke")
        hf_checkpoint.save_checkpoint(model, smoke_dir, bos_id, eos_id)
        bpe_tokenizer_save(tokenizer, smoke_dir, args.context, tokenizer_factory)
        try:
            smoke_eval = evaluate(smoke_dir, float32_copy_of_saved(model), heldout_stream, token_bytes, tokenizer,
                                  args, device, eos_id, quick=True)
            smoke["eval"] = {k: smoke_eval.get(k) for k in
                             ("scorer", "own_vs_transformers_max_abs_logit_diff", "transformers_error")}
        except Exception as error:
            smoke["eval_error"] = repr(error)
            log(f"smoke evaluation failed: {error!r}")
        shutil.rmtree(smoke_dir, ignore_errors=True)
        report["smoke"] = smoke
        log(f"smoke: {smoke}")
        model.load_state_dict(initial_state)  # the timed run starts from the same initial weights

    budget = args.minutes * 60.0
    latest_end = START + args.deadline_seconds - args.reserve_seconds
    seconds = min(budget, latest_end - time.time())
    if seconds < budget:
        log(f"training budget cut from {budget:.0f} s to {seconds:.0f} s to meet --deadline-seconds")
    curve = []
    steps, tokens, wall = run_training(model, loss_fn, sampler, args, device, seconds, monitor, "train", curve)
    report["training"] = {"steps": steps, "tokens": tokens, "wall_seconds": round(wall, 1),
                          "tokens_per_second": round(tokens / wall), "epochs": tokens / train_stream.size,
                          "compiled": compile_model, "batch_tokens": args.batch_size * args.context,
                          "final_loss": curve[-1]["loss"], "curve": curve}
    log(f"trained {steps} steps, {tokens:,} tokens ({tokens / train_stream.size:.2f} epochs) in {wall:.0f} s")

    weights = hf_checkpoint.save_checkpoint(model, args.out, bos_id, eos_id)
    bpe_tokenizer_save(tokenizer, args.out, args.context, tokenizer_factory)
    report["model"] = {"config": config.to_dict(), "parameters": params,
                       "safetensors_bytes": weights.stat().st_size, "dtype": "float16", "tied_embeddings": True}
    log(f"wrote {args.out}: model.safetensors {weights.stat().st_size:,} bytes")

    try:
        report["evaluation"] = evaluate(args.out, float32_copy_of_saved(model), heldout_stream, token_bytes,
                                        tokenizer, args, device, eos_id, tokenizer_cases=tokenizer_cases)
    except Exception:
        report["evaluation_error"] = traceback.format_exc()
        log(f"evaluation failed:\n{report['evaluation_error']}")
    report["total_seconds"] = round(time.time() - START, 1)
    (args.out / "training_report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    log(f"report written; total {report['total_seconds']} s")


def bpe_tokenizer_save(tokenizer, out_dir, context, tokenizer_factory):
    if tokenizer_factory is None:
        bpe_tokenizer.save_tokenizer(tokenizer, out_dir, context)
    else:
        tokenizer.save(str(pathlib.Path(out_dir) / "tokenizer.json"))


if __name__ == "__main__":
    arguments = parse_args()
    try:
        main()
    finally:
        # Whatever got written comes back, also after a failure.
        if arguments.bundle and arguments.out.exists():
            print(f"bundle: {write_bundle(arguments.out, arguments.bundle)}", flush=True)
