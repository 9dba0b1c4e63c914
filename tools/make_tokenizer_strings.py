#!/usr/bin/env python3
"""Writes tests/data/tokenizer_strings.json: the strings whose HF `tokenizers` encodings the
tokenizer tests compare against. Fixed seed, so re-running gives the same file."""
import json
import random
import sys

BASE = [
    "Hello world", "hello world", " Hello world", "Hello  world", "Hello\nworld", "Hello\n\nworld\n",
    "The quick brown fox jumps over the lazy dog.", "I'm sure they've gone; we'll see, he'd said.",
    "DON'T SHOUT, it's RUDE", "x = 12345678901234567890", "3.14159 + 2.71828 = 5.85987",
    "def f(x):\n    return x ** 2\n", "\tindented\twith\ttabs", "   leading and trailing spaces   ",
    "", " ", "  ", "\n", "\r\n", "a", "ab", "¿Qué tal? ¡Muy bien!", "Ça va très bien, merci.",
    "Grüße aus München", "Ελληνικά γράμματα", "Привет, мир!", "日本語のテキスト", "中文分词测试",
    "한국어 문장입니다", "العربية نص", "עברית", "हिन्दी पाठ", "ไทยภาษา", "Tiếng Việt có dấu",
    "emoji 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family", "math ∑∫√∞ ≤ ≥ ≠", "currency €£¥₹ $100",
    "combining e\u0301 vs é", "zero\u200bwidth", "nbsp\u00a0space", "<s> literal special", "</s>",
    "<|begin_of_text|>Hi<|end_of_text|>", "<unk>", "<0x41>", "▁underscore▁lookalike",
    "URL https://example.com/path?q=1&b=2#frag", "email: someone@example.org",
    "JSON {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "C++: std::vector<int> v{1,2,3};",
    "multiple!!! punctuation??? ...", "1 22 333 4444 55555 666666", "MiXeD CaSe WoRdS",
    "snake_case and camelCase and kebab-case", "'quoted' \"double\" `back`",
]

WORDS = ("the of and to in is was for on that with as by at from his her an be this which or had "
         "not are but it were all they she one their there been has have when who will more no if out "
         "so said what up its about into than them can only other new some could time these two may "
         "then do first any my now such like our over man me even most made after also did many before "
         "must through back years where much your way well down should because each just those people "
         "Mr how too little state good very make world still own see men work long get here between both "
         "life being under never day same another know while last might us great old year off come since "
         "against go came right used take three").split()
UNICODE_POOL = ("éèêëàâäôöûüçñßøåæœ" "αβγδεζηθλμπσφψω" "абвгдежзийклмнопрстуфхцчшщыэюя"
                "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年" "あいうえおかきくけこさしすせそ"
                "가나다라마바사아자차카타파하" "😀😂🥲😍🤔🙈🚀🌍🔥✨" "∀∂∃∅∇∈∉∋∏∑−∗√∝∞∠∧∨∩∪∫")


def random_string(rng):
    kind = rng.randrange(5)
    if kind == 0:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
    if kind == 1:
        words = [rng.choice(WORDS).capitalize() if rng.random() < 0.2 else rng.choice(WORDS)
                 for _ in range(rng.randint(3, 20))]
        return " ".join(words) + rng.choice([".", "!", "?", ",", ";", ":", "\n", "\n\n", " ", ""])
    if kind == 2:
        return "".join(rng.choice(UNICODE_POOL + " ") for _ in range(rng.randint(1, 25)))
    if kind == 3:
        parts = []
        for _ in range(rng.randint(2, 10)):
            r = rng.random()
            if r < 0.3:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
            elif r < 0.6:
                parts.append(rng.choice(WORDS))
            else:
                parts.append(rng.choice(" \t\n  ,.;:!?-()[]{}'\"/\\@#$%^&*+=<>|~`_"))
        return "".join(parts)
    return "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(1, 40)))


def main():
    rng = random.Random(20261125)
    strings = list(BASE)
    while len(strings) < 400:
        strings.append(random_string(rng))
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizer_strings.json"
    with open(out, "w", encoding="utf-8") as f:
        json.dump(strings, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {len(strings)} strings to {out}")


if __name__ == "__main__":
    main()
