"""Trains the tiny model's byte-level BPE tokenizer with Hugging Face `tokenizers` and writes
tokenizer.json in the shape runtime/tokenizer*.cpp reads (the same sections as
tools/checkpoint_tokenizer.cpp writes): GPT-2 ByteLevel pre-tokenizer (use_regex), BPE model,
ByteLevel decoder, TemplateProcessing that puts <|begin_of_text|> in front of every sequence.
"""
import json
import pathlib

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"


def train_tokenizer(texts, vocab_size, min_frequency=2):
    """texts: an iterable of strings. Returns (tokenizer, bos_id, eos_id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no unknown input
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)])
    return tokenizer, bos_id, eos_id


def save_tokenizer(tokenizer, out_dir, model_max_length):
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "bos_token": BOS,
        "eos_token": EOS,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
