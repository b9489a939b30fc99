#!/usr/bin/env python3
"""Reference fixtures for diffsteer's text-to-image pieces: CLIP tokenizer ids, tiny
random CLIP text encoders, tiny random VAEs and two tiny complete Stable Diffusion
pipelines with reference runs (see tests/fixtures/README.md, "Text-to-image").

    /work/venv/bin/python tools/make_text_fixtures.py [--out tests/fixtures] [--only PART ...]

PART is one of: tokenizer, text_encoder, vae, pipelines (default: all).

Deterministic like tools/make_model_fixtures.py: every random draw comes from a
torch.Generator / random.Random seeded from a fixed string (crc32), reference maths
is float32 on CPU with one thread, safetensors headers are written sorted; two runs
give byte-identical files. Dev-only: CI never runs it; the outputs are committed.
"""

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import struct
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_clip_tokenizer  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

FULL_TOKENIZER = "clip-tokenizer"
SD2_TOKENIZER = "clip-tokenizer-sd2"
# The tiny pipelines' reduced vocabulary: the first 486 of CLIP's merges, so
# 256 + 256 + 486 + 2 = 1000 symbols (BOS 998, EOS 999).
TINY_MERGES = 486


def gen(tag: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(tag.encode()))
    return g


def randn(shape, tag):
    return torch.randn(shape, generator=gen(tag), dtype=torch.float32)


def save_safetensors(tensors, path, metadata):
    """A safetensors file with a byte-deterministic header (sorted names and metadata,
    compact JSON padded to 8 bytes), written atomically and read back as a check."""
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.uint8: "U8"}
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    hjson += b" " * (-len(hjson) % 8)
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


# ------------------------------------------------------------------------ tokenizer

TRICKY = [
    "",
    " ",
    "   \t\n  ",
    "a photograph of an astronaut riding a horse",
    "A PHOTOGRAPH of an Astronaut RIDING a HoRsE",
    "don't stop, I'm here; we'll see. they've it's she'd you're",
    "DON'T I'M WE'LL THEY'VE",
    "rock'n'roll o'clock ''quoted'' 's 't",
    "café déjà vu naïve façade Ångström crème brûlée",
    "e\u0301 combining a\u0308 o\u0302",  # NFC composes these
    "Straße ﬁre ﬂower ǅ İstanbul",
    "ΟΔΟΣ Σίσυφος ΣΣ",
    "東京タワーの夜景、水墨画のスタイル",
    "한국어 프롬프트 테스트",
    "Москва зимой, масляная живопись",
    "عربي العربية",
    "emoji 🐱‍👤 🎨🖌️ ❤️ 👍🏽 🇯🇵",
    "numbers 12345 3.14159 1,000,000 2nd 3rd 10x 4k 8K",
    "punctuation ... ?!?! --- ((( ))) [[x]] {y} <z> ~~~ ***",
    "!!!wow!!! hello! world!! (masterpiece:1.2), [bad]",
    "tabs\tand\nnewlines\r\nand    spaces\u00a0nbsp\u3000ideographic",
    "\u001c\u001d\u001e\u001f separators \u0085 nel \u200b zwsp \ufeff bom",
    "&amp; &lt;b&gt; &quot;quoted&quot; &#39;apos&#39;",
    "<|startoftext|> literal <|endoftext|> tokens <|ENDOFTEXT|> <|StartOfText|>",
    "x<|endoftext|>y<|endoftext|><|endoftext|>",
    "mixed CaSe WoRdS and UPPER lower MiXeD123abc",
    "a,b;c:d'e\"f/g\\h|i@j#k$l%m^n&o*p",
    "snake_case kebab-case camelCase PascalCase dot.case",
    "http://example.com/path?q=1&r=2 user@example.com",
    "¡hola! ¿qué tal? «guillemets» „quotes“ ‘single’ “double”",
    "\u0000nul \u0007bell \u001bescape",
    "soft\u00adhyphen zero\u200dwidth joiner",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "𝔉𝔯𝔞𝔨𝔱𝔲𝔯 𝐛𝐨𝐥𝐝 math alphanumerics",
    "a " * 100,
    "masterpiece, best quality, highly detailed, " * 8,
    " ".join(f"word{i}" for i in range(90)),
    "supercalifragilisticexpialidocious" * 3,
    "1234567890" * 10,
    "!" * 80,
]

FUZZ_POOLS = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\u00a0\u3000",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÎÕÜ",
    "\u0301\u0308\u0302\u0327",
    "αβγδεζηθΣσςΩωабвгдежзЖЩЯ",
    "日本語中文漢字ひらがなカタカナ한글",
    "😀🐱🎨❤️👍🏽\u200d🇯🇵",
    "İıŁłŒœǅǆﬁﬂ",
]
FUZZ_PIECES = ["'s", "'T", "'re", "'LL", "don't", "<|endoftext|>", "<|startoftext|>", "&amp;", "!!", "...", "..."]


def fuzz_corpus(count):
    rnd = random.Random(zlib.crc32(b"tokenizer/fuzz"))
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rnd.randint(1, 14)):
            if rnd.random() < 0.15:
                parts.append(rnd.choice(FUZZ_PIECES))
            else:
                pool = rnd.choice(FUZZ_POOLS)
                parts.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 8))))
        out.append("".join(parts))
    return out


def tokenizer_variants(out):
    """The tokenizer folders the corpus runs through: (name, folder relative to out)."""
    return [
        ("sd1", FULL_TOKENIZER),
        ("sd2", SD2_TOKENIZER),
        ("sd1_tiny", "pipelines/sd1_tiny/tokenizer"),
        ("sd2_tiny", "pipelines/sd2_tiny/tokenizer"),
    ]


def make_tokenizer_folders(out):
    """The full vocabulary once, SD 1.x style; the SD 2.x pad variant beside it, its
    vocab.json and merges.txt relative symlinks to the same files."""
    vocab, merges = make_clip_tokenizer.build(make_clip_tokenizer.FULL_MERGES)
    full = out / FULL_TOKENIZER
    make_clip_tokenizer.write(full, vocab, merges, make_clip_tokenizer.EOS)
    sd2 = out / SD2_TOKENIZER
    if sd2.exists():
        shutil.rmtree(sd2)
    make_clip_tokenizer.write(sd2, vocab, merges, "!")
    for name in ("vocab.json", "merges.txt"):
        (sd2 / name).unlink()
        (sd2 / name).symlink_to(Path("..") / FULL_TOKENIZER / name)
    make_clip_tokenizer.check(full, vocab, make_clip_tokenizer.EOS, True)
    make_clip_tokenizer.check(sd2, vocab, "!", False)


def make_tokenizer_fixture(out):
    corpus = TRICKY + fuzz_corpus(60)
    variants = tokenizer_variants(out)
    tokenizers = {}
    for name, folder in variants:
        path = out / folder
        if not path.is_dir():
            print(f"WARNING {path} is missing (run the pipelines part first)")
            continue
        tokenizers[name] = transformers.CLIPTokenizer.from_pretrained(str(path))
    variants = [(n, f) for n, f in variants if n in tokenizers]
    cases = []
    for prompt in corpus:
        case = {"prompt": prompt}
        for name, tok in tokenizers.items():
            # Exactly the call diffusers' encode_prompt makes.
            padded = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True)["input_ids"]
            full = tok(prompt)["input_ids"]
            assert len(padded) == 77
            # Stored without the padding (reconstructible: BOS, the tokens and EOS fill
            # min(full length, 77) places, pad_id the rest), checked here.
            end = min(len(full), 77)
            kept = padded[:end]
            assert kept[-1] == tok.eos_token_id
            assert kept + [tok.pad_token_id] * (77 - end) == padded
            case[name] = {"ids": kept, "full_length": len(full)}
        cases.append(case)
    fixture = {
        "transformers_version": transformers.__version__,
        "call": 'tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)',
        "tokenizers": {
            name: {"folder": folder, "pad_id": tokenizers[name].pad_token_id, "max_length": 77} for name, folder in variants
        },
        "note": "ids: the first min(full_length, 77) of the padded 77 ids (the rest is pad_id); "
        "full_length: the untruncated length with BOS and EOS",
        "cases": cases,
    }
    # One case per line: small, and a diff shows which prompts changed.
    cases_text = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":"), sort_keys=True) for c in cases)
    head = json.dumps({k: v for k, v in fixture.items() if k != "cases"}, ensure_ascii=False, indent=1, sort_keys=True)
    with open(out / "text" / "tokenizer_cases.json", "w", encoding="utf-8") as f:
        f.write(head[:-2] + ',\n "cases": [\n' + cases_text + "\n ]\n}\n")
    assert json.load(open(out / "text" / "tokenizer_cases.json", encoding="utf-8")) == fixture
    truncated = sum(c["sd1"]["full_length"] > 77 for c in cases)
    print(f"tokenizer: {len(cases)} prompts x {len(variants)} tokenizers ({truncated} truncated)")


def make_text_encoders(out):
    raise NotImplementedError


def make_vaes(out):
    raise NotImplementedError


def make_pipelines(out):
    raise NotImplementedError


# ------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests/fixtures"))
    p.add_argument("--only", nargs="*", choices=["tokenizer", "text_encoder", "vae", "pipelines"])
    args = p.parse_args()
    out = Path(args.out)
    (out / "text").mkdir(parents=True, exist_ok=True)
    parts = args.only or ["tokenizer", "text_encoder", "vae", "pipelines"]
    if "tokenizer" in parts:
        make_tokenizer_folders(out)
    if "text_encoder" in parts:
        make_text_encoders(out)
    if "vae" in parts:
        make_vaes(out)
    if "pipelines" in parts:
        make_pipelines(out)
    if "tokenizer" in parts:
        make_tokenizer_fixture(out)


if __name__ == "__main__":
    main()
