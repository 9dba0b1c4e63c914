"""Held-out perplexity and text samples for the trained checkpoint, through Hugging Face
transformers' LlamaForCausalLM loaded from the written directory (which also proves the
directory is a valid HF checkpoint), with the training model as the fallback scorer.
"""
import math

import torch
import torch.nn.functional as F


def load_hf_model(model_dir, device):
    from transformers import LlamaForCausalLM

    try:
        model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:  # transformers before 4.56 call it torch_dtype
        model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    return model.to(device).eval()


def hf_logits_fn(model):
    return lambda ids: model(input_ids=ids).logits


@torch.no_grad()
def perplexity(logits_fn, stream, context, total_tokens, token_bytes, batch_tokens=32768):
    """Mean next-token loss over stream[:total_tokens] cut into windows of `context` tokens
    (each window starts cold; its first token is not scored). token_bytes[id] is the number
    of text bytes a token stands for (0 for special tokens), for bits per byte."""
    windows = stream[: (total_tokens // context) * context].view(-1, context)
    batch = max(1, batch_tokens // context)
    nll, tokens, text_bytes = 0.0, 0, 0
    for i in range(0, windows.shape[0], batch):
        x = windows[i:i + batch]
        logits = logits_fn(x).float()
        targets = x[:, 1:]
        nll += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               reduction="sum").item()
        tokens += targets.numel()
        text_bytes += int(token_bytes[targets].sum().item())
    return {
        "context": context,
        "windows": int(windows.shape[0]),
        "scored_tokens": tokens,
        "mean_nll": nll / tokens,
        "perplexity": math.exp(nll / tokens),
        "bits_per_byte": nll / math.log(2) / max(1, text_bytes),
    }


@torch.no_grad()
def hf_generate(model, prompt_ids, max_new_tokens, eos_id, sample=None):
    """Greedy continuation, or sampled when sample = {seed, temperature, top_p}."""
    x = torch.tensor([prompt_ids], device=model.device)
    kwargs = {"max_new_tokens": max_new_tokens, "pad_token_id": eos_id, "eos_token_id": eos_id}
    if sample:
        torch.manual_seed(sample["seed"])
        kwargs.update(do_sample=True, temperature=sample["temperature"], top_p=sample["top_p"], top_k=0)
    else:
        kwargs.update(do_sample=False)
    out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs)
    return out[0, len(prompt_ids):].tolist()


@torch.no_grad()
def own_generate(logits_fn, prompt_ids, max_new_tokens, eos_id, device, sample=None):
    """The same continuation with the training model (full forward each step; tiny model)."""
    ids = list(prompt_ids)
    generator = None
    if sample:
        generator = torch.Generator(device="cpu").manual_seed(sample["seed"])
    for _ in range(max_new_tokens):
        logits = logits_fn(torch.tensor([ids], device=device))[0, -1].float().cpu()
        if sample:
            probs = torch.softmax(logits / sample["temperature"], -1)
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < sample["top_p"]
            sorted_probs = sorted_probs * keep
            token = int(order[torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)])
        else:
            token = int(logits.argmax())
        ids.append(token)
        if token == eos_id:
            break
    return ids[len(prompt_ids):]
