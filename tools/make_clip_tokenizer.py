#!/usr/bin/env python3
"""CLIP's tokenizer files (`vocab.json`, `merges.txt`) derived from the BPE merge list
that ships inside the `open_clip_torch` wheel (`open_clip/bpe_simple_vocab_16e6.txt.gz`,
the file OpenAI's CLIP repository ships), built the way CLIP builds its vocabulary:

    merges = lines[1 : 49152 - 256 - 2 + 1]           # 48,894 merges; line 0 is a header
    vocab  = the 256 byte symbols (GPT-2's byte -> unicode map, in its order)
           + the same 256 with "</w>" appended
           + one symbol per merge (the two halves joined), in merge order
           + "<|startoftext|>", "<|endoftext|>"       # 49,408 ids; BOS 49406, EOS 49407

`merges.txt` is the Hugging Face format: a "#version: 0.2" line, then the merges.

    /work/venv/bin/python tools/make_clip_tokenizer.py [--out tests/fixtures/clip-tokenizer]
    /work/venv/bin/python tools/make_clip_tokenizer.py --merges 486 --out DIR   # a reduced one

With `--merges N` only the first N merges are kept (a smaller vocabulary of
512 + N + 2 symbols that tokenizes like CLIP's, with longer token sequences): the tiny
test pipelines use one so their text encoders' embedding tables stay small.

Checks, after writing:
1. `transformers.CLIPTokenizer.from_pretrained(out)` loads the files and gives the
   vocabulary size, BOS/EOS/pad ids and `model_max_length` expected.
2. For the full vocabulary: it tokenizes a corpus exactly as open_clip's own
   `SimpleTokenizer` (CLIP's reference tokenizer) does, apart from the cleanup the
   two do differently (reported, not failed): open_clip runs `ftfy.fix_text` and
   `html.unescape` twice before lower-casing; transformers' CLIPTokenizer (a
   `tokenizers` pipeline: NFC, `\\s+` -> " ", lowercase) does neither, so e.g.
   "&amp;" stays "&amp;" in transformers and becomes "&" in open_clip. The engine
   follows transformers, which is what diffusers runs.

Deterministic: two runs write byte-identical files. Dev-only (CI never runs it).
"""

import argparse
import gzip
import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL_MERGES = 49152 - 256 - 2  # CLIP keeps merges[1 : 49152 - 256 - 2 + 1]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols():
    """GPT-2's reversible byte -> printable unicode map, as a list indexed by byte.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in byte order,
    to the code points 256, 257, ... so no symbol is whitespace or a control character."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    table, extra = [], 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(256 + extra))
            extra += 1
    return table


def symbol_order():
    """The order CLIP lists the byte symbols in: printable bytes first (ascending),
    then the remapped ones (ascending byte value)."""
    table = byte_symbols()
    printable = [b for b in range(256) if table[b] == chr(b)]
    rest = [b for b in range(256) if table[b] != chr(b)]
    return [table[b] for b in printable + rest]


def bpe_source():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        sys.exit("open_clip is not installed (pip install open_clip_torch): it ships CLIP's BPE merges")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def build(n_merges):
    lines = gzip.open(bpe_source()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    assert all(len(m) == 2 for m in merges), "every merge is two symbols"
    base = symbol_order()
    vocab = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(set(vocab)) == len(vocab), "vocabulary symbols are unique"
    return {s: i for i, s in enumerate(vocab)}, merges


def write(out, vocab, merges, pad_token):
    out.mkdir(parents=True, exist_ok=True)
    # Hugging Face's own files: compact vocab.json in id order, merges.txt with a header.
    with open(out / "vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, separators=(",", ":"))
    with open(out / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    special = lambda content: {  # noqa: E731
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }
    # As Stable Diffusion's tokenizer folders have them (SD 1.x pads with the EOS
    # token, SD 2.x with "!").
    config = {
        "add_prefix_space": False,
        "bos_token": special(BOS),
        "do_lower_case": True,
        "eos_token": special(EOS),
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": pad_token if pad_token != EOS else EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": special(EOS),
    }
    with open(out / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    specials = {"bos_token": special(BOS), "eos_token": special(EOS), "pad_token": pad_token, "unk_token": special(EOS)}
    with open(out / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump(specials, f, indent=2, sort_keys=True)
        f.write("\n")


CORPUS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An ASTRONAUT, riding a horse!!!",
    "don't stop, I'm here; we'll see. they've it's she'd you're",
    "café déjà vu naïve façade Ångström",
    "東京タワーの夜景 水墨画",
    "emoji 🐱‍👤 🎨🖌️ ❤️",
    "numbers 12345 3.14159 1,000,000 2nd 3rd",
    "punctuation ... ?!?! --- ((( ))) [[x]] {y} <z>",
    "tabs\tand\nnewlines   and    spaces",
    "mixed CaSe WoRdS and UPPER lower",
    "a,b;c:d'e\"f",
]


def check(out, vocab, pad_token, full):
    import transformers

    tok = transformers.CLIPTokenizer.from_pretrained(str(out))
    assert len(tok) == len(vocab), (len(tok), len(vocab))
    assert tok.bos_token_id == vocab[BOS] and tok.eos_token_id == vocab[EOS]
    assert tok.pad_token_id == vocab[pad_token], (tok.pad_token_id, vocab[pad_token])
    assert tok.model_max_length == 77
    if not full:
        print(f"{out}: {len(vocab)} symbols; transformers loads it (pad {pad_token!r} = {tok.pad_token_id})")
        return
    from open_clip.tokenizer import SimpleTokenizer

    reference = SimpleTokenizer()
    same, differ = 0, []
    for text in CORPUS + ["&amp; &lt;b&gt; &quot;quoted&quot;"]:
        ours = tok(text, add_special_tokens=False)["input_ids"]
        theirs = reference.encode(text)
        if ours == theirs:
            same += 1
        else:
            differ.append((text, ours, theirs))
    for text, ours, theirs in differ:
        print(f"  differs (cleanup): {text!r}: transformers {ours} vs open_clip {theirs}")
    # Only the HTML entities may differ: everything else must agree exactly.
    assert all("&" in text for text, _, _ in differ), "transformers and open_clip disagree beyond HTML entities"
    print(f"{out}: {len(vocab)} symbols; transformers == open_clip on {same} of {same + len(differ)} prompts")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests/fixtures/clip-tokenizer"))
    p.add_argument("--merges", type=int, default=FULL_MERGES, help=f"merges to keep (default all {FULL_MERGES})")
    p.add_argument("--pad", default=EOS, help='pad token ("<|endoftext|>" as SD 1.x, "!" as SD 2.x)')
    p.add_argument("--no-check", action="store_true")
    args = p.parse_args()
    if not 0 <= args.merges <= FULL_MERGES:
        sys.exit(f"--merges must be in 0..={FULL_MERGES}")
    vocab, merges = build(args.merges)
    if args.pad not in vocab:
        sys.exit(f"--pad {args.pad!r} is not a symbol of the vocabulary")
    out = Path(args.out)
    write(out, vocab, merges, args.pad)
    if not args.no_check:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        check(out, vocab, args.pad, args.merges == FULL_MERGES)


if __name__ == "__main__":
    main()
