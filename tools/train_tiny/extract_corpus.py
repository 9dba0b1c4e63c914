#!/usr/bin/python3
"""Turns the unpacked Debian text packages into the tiny model's training corpus.

Standard library only (runs with Debian's python3). Called by prepare_corpus.sh:
  extract_corpus.py --root UNPACKED --bible-text KJV.txt --out DIR

Writes DIR/train.jsonl.xz and DIR/heldout.jsonl.xz (one {"source", "name", "text"} object per
line) and DIR/stats.json. Each source is cut into documents in a fixed order; document i of a
source is held out when i % HELDOUT_EVERY == HELDOUT_OFFSET, so the held-out slice is the same
on every run and spans every source in proportion.
"""
import argparse
import gzip
import html.parser
import json
import lzma
import pathlib
import re
import subprocess

HELDOUT_EVERY = 50
HELDOUT_OFFSET = 25
MIN_DOC_CHARS = 200
GCIDE_ENTRIES_PER_DOC = 40
GCIDE_KEEP_EVERY = 2  # the whole dictionary (~28 MB cleaned) would drown the prose; keep every 2nd group
FORTUNES_PER_DOC = 25
FORTUNE_FILES_SKIPPED = {"ascii-art"}  # pictures, not text

BOX_DRAWING = re.compile("[\u2500-\u257f]")
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
MANY_BLANK_LINES = re.compile(r"\n{3,}")


def tidy(text):
    """Drops table-art lines and trailing spaces and squeezes blank runs."""
    text = CONTROL_CHARS.sub("", text.replace("\r\n", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    lines = [line for line in lines if not BOX_DRAWING.search(line)]
    return MANY_BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def mostly_english(text):
    """Rejects documents that are mostly outside Latin script (translations)."""
    letters = sum(1 for ch in text if ch.isalpha())
    ascii_letters = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return letters > 0 and ascii_letters / letters > 0.97


def chunk_paragraphs(text, target_chars):
    """Splits a long text at paragraph breaks into pieces of about target_chars."""
    pieces, current, size = [], [], 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph) + 2
        if size >= target_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return pieces


# ---- sources: each yields (name, text) documents in a fixed order ----

def kjv_documents(bible_text):
    """One document per chapter: the heading line, then one verse per line."""
    chapter, verses = None, []
    for line in bible_text.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        if re.match(r"^\d+ ", stripped) and line.startswith(" "):
            verses.append(stripped)
        else:
            if chapter is not None:
                yield chapter, chapter + "\n\n" + "\n".join(verses)
            chapter, verses = stripped, []
    if chapter is not None:
        yield chapter, chapter + "\n\n" + "\n".join(verses)


DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def dictd_number(text):
    value = 0
    for ch in text:
        value = value * 64 + DICTD_DIGITS.index(ch)
    return value


def dictd_entries(index_path, dict_path):
    """Entries of a dictd database in file order, each once (several headwords share one)."""
    data = gzip.open(dict_path).read()
    spans = set()
    for line in open(index_path, encoding="utf-8"):
        fields = line.rstrip("\n").split("\t")
        if len(fields) < 3 or fields[0].startswith("00-database") or fields[0].startswith("00database"):
            continue
        spans.add((dictd_number(fields[1]), dictd_number(fields[2])))
    for offset, length in sorted(spans):
        yield data[offset:offset + length].decode("utf-8", "replace")


GCIDE_SOURCE_TAG = re.compile(r"\[(?:1913 Webster|WordNet 1\.5|PJC|Century Dict\.|Webster 1913 Suppl\.|"
                              r"Chambers 1881|RH|Note:?|MW10|AS|Brand)[^\]]*\]")
GCIDE_PRONUNCIATION = re.compile(r" \\[^\\\n]+\\")


def clean_gcide_entry(entry):
    entry = GCIDE_SOURCE_TAG.sub("", entry)
    entry = GCIDE_PRONUNCIATION.sub("", entry)
    entry = entry.replace("{", "").replace("}", "")
    lines = [re.sub(r"\s+", " ", line).strip() for line in entry.split("\n")]
    # Re-flow: consecutive non-empty lines are one paragraph.
    paragraphs, current = [], []
    for line in lines:
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def gcide_documents(root):
    base = root / "dict-gcide/usr/share/dictd"
    group, number = [], 0
    for entry in dictd_entries(base / "gcide.index", base / "gcide.dict.dz"):
        cleaned = clean_gcide_entry(entry)
        if cleaned:
            group.append(cleaned)
        if len(group) == GCIDE_ENTRIES_PER_DOC:
            if number % GCIDE_KEEP_EVERY == 0:
                yield f"gcide/{number}", "\n\n".join(group)
            group, number = [], number + 1


def devil_documents(root):
    base = root / "dict-devil/usr/share/dictd"
    entries = [tidy(e) for e in dictd_entries(base / "devil.index", base / "devil.dict.dz")]
    for i in range(0, len(entries), 20):
        yield f"devil/{i}", "\n\n".join(entries[i:i + 20])


def fortune_documents(root):
    base = root / "fortunes/usr/share/games/fortunes"
    for path in sorted(base.iterdir()):
        if path.suffix == ".dat" or path.is_symlink() or path.name in FORTUNE_FILES_SKIPPED:
            continue
        cookies = [tidy(c) for c in path.read_text(encoding="utf-8", errors="replace").split("\n%\n")]
        cookies = [c for c in cookies if c and c != "%"]
        for i in range(0, len(cookies), FORTUNES_PER_DOC):
            yield f"fortunes/{path.name}/{i}", "\n\n".join(cookies[i:i + FORTUNES_PER_DOC])


def text_file_documents(paths, strip_prefix, target_chars=None):
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            text = tidy(f.read())
        name = str(path.relative_to(strip_prefix))
        if target_chars:
            for i, piece in enumerate(chunk_paragraphs(text, target_chars)):
                yield f"{name}/{i}", piece
        else:
            yield name, text


def rst_documents(sources_dir, skip_dirs=()):
    paths = sorted(p for p in sources_dir.rglob("*.txt")
                   if not any(part in skip_dirs for part in p.relative_to(sources_dir).parts))
    for name, text in text_file_documents(paths, sources_dir):
        # SPDX tags and reST comment-only lines carry no prose.
        text = "\n".join(line for line in text.split("\n") if line != ".." and not line.startswith(".. SPDX"))
        yield name, text


def pod_documents(root):
    pod_dir = root / "perl-doc/usr/share/perl/5.36.0/pod"
    for path in sorted(pod_dir.glob("*.pod")):
        result = subprocess.run(["pod2text", "--utf8", str(path)], capture_output=True, check=False)
        text = tidy(result.stdout.decode("utf-8", "replace"))
        yield f"perl/{path.stem}", text


class HtmlText(html.parser.HTMLParser):
    """Visible text of an HTML page, with block elements as paragraph breaks."""
    BLOCKS = {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "tr", "dt", "dd",
              "table", "ul", "ol", "blockquote", "section", "title"}
    HIDDEN = {"script", "style", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.hidden, self.pre = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self.hidden += 1
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.hidden:
            return
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self):
        joined = "".join(self.parts)
        lines = [line.strip() if not line.startswith("    ") else line.rstrip() for line in joined.split("\n")]
        return tidy("\n".join(lines))


def html_documents(paths, strip_prefix):
    for path in paths:
        parser = HtmlText()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        yield str(path.relative_to(strip_prefix)), parser.text()


def all_sources(root, bible_text):
    """(source name, document iterator) in a fixed order."""
    linux = root / "linux-doc-6.1/usr/share/doc/linux-doc-6.1/html/_sources"
    python = root / "python3.11-doc/usr/share/doc/python3.11/html/_sources"
    handbook = root / "debian-handbook/usr/share/doc/debian-handbook/html/en-US"
    reference = root / "debian-reference-en/usr/share/debian-reference"
    gnu = root / "gnu-standards/usr/share/doc/gnu-standards"
    jargon = root / "jargon-text/usr/share/doc/jargon-text/jargon.txt.gz"
    return [
        ("bible-kjv-text", kjv_documents(bible_text)),
        ("fortunes", fortune_documents(root)),
        ("dict-devil", devil_documents(root)),
        ("jargon-text", text_file_documents([jargon], jargon.parent, target_chars=6000)),
        ("gnu-standards", text_file_documents(sorted(gnu.glob("*.text.gz")), gnu, target_chars=6000)),
        ("debian-handbook", html_documents(sorted(handbook.glob("*.html")), handbook)),
        ("debian-reference-en", html_documents(sorted(reference.glob("*.en.html")), reference)),
        ("perl-doc", pod_documents(root)),
        ("python3.11-doc", rst_documents(python)),
        ("linux-doc-6.1", rst_documents(linux, skip_dirs={"translations"})),
        ("dict-gcide", gcide_documents(root)),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, type=pathlib.Path, help="folder with one unpacked package per name")
    ap.add_argument("--bible-text", required=True, type=pathlib.Path, help="KJV as printed by `bible -l100000`")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    bible_text = args.bible_text.read_text(encoding="utf-8")

    stats = {"heldout_rule": f"document i of each source is held out when i % {HELDOUT_EVERY} == {HELDOUT_OFFSET}",
             "sources": {}}
    outputs = {split: lzma.open(args.out / f"{split}.jsonl.xz", "wt", encoding="utf-8", preset=6)
               for split in ("train", "heldout")}
    for source, documents in all_sources(args.root, bible_text):
        counts = {"train_docs": 0, "train_chars": 0, "heldout_docs": 0, "heldout_chars": 0,
                  "skipped_docs": 0}
        index = 0
        for name, text in documents:
            if len(text) < MIN_DOC_CHARS or not mostly_english(text):
                counts["skipped_docs"] += 1
                continue
            split = "heldout" if index % HELDOUT_EVERY == HELDOUT_OFFSET else "train"
            index += 1
            outputs[split].write(json.dumps({"source": source, "name": name, "text": text},
                                            ensure_ascii=False) + "\n")
            counts[f"{split}_docs"] += 1
            counts[f"{split}_chars"] += len(text)
        stats["sources"][source] = counts
        print(f"{source:22s} {counts}", flush=True)
    for f in outputs.values():
        f.close()
    totals = {key: sum(c[key] for c in stats["sources"].values())
              for key in ("train_docs", "train_chars", "heldout_docs", "heldout_chars")}
    stats["totals"] = totals
    (args.out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    print("totals", totals)


if __name__ == "__main__":
    main()
