#!/usr/bin/env python3
# Pinned reference (see reference/requirements-tokenizer.txt), CPython 3.11.7:
#   clip-anytorch==2.6.0 (clip/simple_tokenizer.py, OpenAI CLIP's SimpleTokenizer)
#   ftfy==6.3.1, wcwidth==0.9.4, regex==2026.11.19
#   pip install --no-deps -r reference/requirements-tokenizer.txt
"""Golden data for the Rust CLIP tokenizer (models/src/clip/tokenizer.rs).

Default: writes tests/fixtures/golden/tokenizer.json, an object with
  "reference": the pinned versions,
  "cases":  [{"text", "ids"}]   raw ids from SimpleTokenizer.encode (no BOS/EOS),
  "framed": [{"text", "pad", "ids"}]  77-id sequences as the SD pipelines build them.

--entities PATH   writes the HTML5 named character reference table (Python's
                  html.entities.html5) that the Rust port embeds, one `name<TAB>hex hex` a line.
--exhaustive PATH writes JSON lines [codepoint, text, ids, skip] for every assigned code point;
--fuzz PATH       writes the same rows for random texts built from tricky fragments (entities,
                  escapes, controls, quotes, width forms). Both are optional cross-checks: run the
                  ignored Rust test `tokenizer_matches_reference_exhaustive` with
                  CLIP_TOKENIZER_EXHAUSTIVE=PATH (rows with a `skip` reason are not compared).

Run from the repository root: python reference/gen_tokenizer_golden.py
"""

import argparse
import html.entities
import importlib.util
import json
import os
import random
import sys
import unicodedata

import ftfy
import regex

# Import clip/simple_tokenizer.py without running clip/__init__.py, which imports torchvision.
_spec = importlib.util.find_spec("clip")
_path = os.path.join(_spec.submodule_search_locations[0], "simple_tokenizer.py")
_mod_spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", _path)
simple_tokenizer = importlib.util.module_from_spec(_mod_spec)
_mod_spec.loader.exec_module(simple_tokenizer)

SOT = 49406
EOT = 49407
CONTEXT = 77

LONG_PROMPT = (
    "masterpiece, best quality, ultra-detailed, 8k uhd, a breathtaking panoramic landscape of "
    "an ancient elven city carved into the side of a towering cliff, waterfalls cascading "
    "between marble bridges, golden hour lighting, volumetric fog drifting through the "
    "valley below, lush emerald forests, tiny figures walking along winding stone paths, "
    "intricate architecture with spires and domes, cinematic composition, dramatic clouds, "
    "by greg rutkowski and alphonse mucha, trending on artstation, octane render, sharp "
    "focus, highly detailed, hdr, 35mm lens, f/1.8, bokeh, ray tracing, global illumination"
)

CASES = [
    # Typical SD prompts.
    "a photograph of an astronaut riding a horse",
    "masterpiece, best quality, 1girl, solo, long hair, looking at viewer, smile",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, "
    "cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark",
    "(masterpiece:1.2), (best quality:1.1), ((detailed)), [[blurry]], (red eyes:0.8)",
    "[blue|red] dress, [cat:dog:0.5], {from_above}",
    "portrait of a woman <lora:add_detail:0.8> <lyco:film_grain:0.6>, embedding:easynegative",
    "a cat AND a dog BREAK sunset background",
    "A Photo Of A CAT In THE Style Of VAN GOGH",
    "RAW photo, DSLR, Fujifilm XT3, 85mm, f/2.8",
    "score_9, score_8_up, score_7_up, source_anime, rating_safe",
    "cyberpunk city at night, neon lights, rain, reflections, blade runner 2049 style",
    "by greg rutkowski, artgerm, alphonse mucha; trending on artstation!!!",
    "hyper-realistic, ultra_detailed, hdr+, 4k/8k, high-res",
    "an oil painting -- in the style of rembrandt ... (chiaroscuro)",
    "emma watson as a jedi",
    # Whitespace.
    "  leading and trailing spaces   ",
    "multiple     spaces\tand\ttabs\nand\nnewlines\r\nand crlf",
    "line one\n\n\nline two\u00a0non-breaking\u2003em space\u3000ideographic space",
    "",
    " \t\n  \r\n ",
    # HTML entities (ftfy unescapes to a fixed point, then CLIP unescapes twice more).
    "salt &amp; pepper",
    "&quot;quoted&quot; &#39;single&#39; &lt;angle&gt;",
    "double escaped &amp;amp; and triple &amp;amp;amp; and quadruple &amp;amp;amp;amp;",
    "&copy; 2023 &mdash; caf&eacute; &hellip; &nbsp;gap &euro;5 &frac12;",
    "numeric &#65;&#x42;&#X43; &#128; &#0; &#x110000; &#99999999999;",
    "no semicolon &amp &lt &copy &notin &notit; &ampx &AMP; &EACUTE; &SZLIG;",
    "html <b>bold</b> &amp;amp; keeps one level",
    "first line &amp;amp;\nsecond <line> &amp;amp;\nthird &amp;amp;",
    # Apostrophes and contractions.
    "it's a dog's life, we'll see, don't stop, they're here, i've been, i'm fine, he'd go",
    "IT'S LOUD, DON'T SHOUT",
    "rock 'n' roll, 'single quotes', the '90s, o'neill",
    "curly \u2018quotes\u2019 and \u201cdouble\u201d it\u2019s",
    # Digits.
    "1234 3.5 768x512 1girl 2boys 0.75 1e-4 100%",
    "seed 4294967295, steps 20, cfg 7.5, size 512x768",
    "\u0661\u0662\u0663 \u00b2\u00b3 \u2167 \u2460",
    # Non-ASCII.
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 fa\u00e7ade \u00fcber stra\u00dfe",
    "cafe\u0301 with a combining accent (NFC makes it caf\u00e9)",
    "\u6771\u4eac\u30bf\u30ef\u30fc\u3068\u5bcc\u58eb\u5c71",
    "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u039f\u0394\u039f\u03a3 \u03c3\u03bf\u03c6\u03af\u03b1",
    "\u043f\u0440\u0438\u0432\u0435\u0442 \u041c\u0418\u0420",
    "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947",
    "\ud55c\uad6d\uc5b4 \u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22",
    "\u0130stanbul DA\u011e",
    "\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33 \uff11\uff12\uff13 \uff76\uff9e\uff97\uff7d",
    "\ufb01ne \ufb02ower \ufb03x \u0133s",
    # Emoji and symbols.
    "a cute cat \U0001f431 with hearts \u2764\ufe0f\u2728 and \U0001f468\u200d\U0001f469\u200d\U0001f467",
    "\U0001f1ef\U0001f1f5 flag, \U0001f44d\U0001f3fd thumbs",
    "arrows \u2192 \u2190, math \u2211 \u221e \u00b1, currency \u00a5 \u00a3 \u20ac",
    "\u00bd \u2122 \u00ae \u00a9 \u00b0C",
    # Special-token text and odd characters.
    "<|startoftext|>hello<|endoftext|>",
    "<|STARTOFTEXT|> shouting <|EndOfText|>",
    "control\x01chars\x07removed\x0bhere\x7f and \x1b[31mansi\x1b[0m",
    "zero\u200bwidth and bom\ufeffinside, soft\u00adhyphen",
    "!!!???...,,,;;;:::",
    # IGNORECASE corner cases of the pre-tokenizer regex: `'s` matches `'\u017f` (long s), and the
    # combining ypogegrammeni U+0345 (which case-folds to iota) matches nothing and is dropped.
    "it'\u017f \u03b1\u0345 \u1fb3 x\u0345x",
    "a" * 40,
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "_underscores_ and-dashes and/slashes and\\backslashes",
    "\U0001d573\U0001d58a\U0001d586 \U0001d41b\U0001d428\U0001d425\U0001d41d",
    # Long prompts (> 75 tokens), for truncation.
    LONG_PROMPT,
    ", ".join(["red", "green", "blue"] * 40),
]

# (text, pad) pairs; pad 49407 = SD1/SDXL CLIP-L, pad 0 = SD2 OpenCLIP-H / SDXL bigG.
FRAMED = [
    ("a photograph of an astronaut riding a horse", EOT),
    ("a photograph of an astronaut riding a horse", 0),
    ("", EOT),
    ("", 0),
    (LONG_PROMPT, EOT),
    (LONG_PROMPT, 0),
    (", ".join(["red", "green", "blue"] * 40), 0),
]


def framed(tok, text, pad):
    """The 77-id sequence: clip.tokenize(text, truncate=True) for pad 0; the same with every
    slot after the EOS set to EOS for pad 49407 (A1111 / diffusers for CLIP-L)."""
    tokens = [SOT] + tok.encode(text) + [EOT]
    if len(tokens) > CONTEXT:
        tokens = tokens[:CONTEXT]
        tokens[-1] = EOT
    return tokens + [pad] * (CONTEXT - len(tokens))


def write_golden(path):
    tok = simple_tokenizer.SimpleTokenizer()
    cases = [{"text": t, "ids": tok.encode(t)} for t in CASES]
    assert any(len(c["ids"]) > 100 for c in cases)
    out = {
        "reference": {
            "python": sys.version.split()[0],
            "clip-anytorch": "2.6.0",
            "ftfy": ftfy.__version__,
            "regex": regex.__version__,
            "unicodedata": unicodedata.unidata_version,
        },
        "cases": cases,
        "framed": [{"text": t, "pad": p, "ids": framed(tok, t, p)} for t, p in FRAMED],
    }
    # One case per line keeps the file readable and its diffs small.
    with open(path, "w", encoding="utf-8") as f:
        f.write('{\n "reference": ' + json.dumps(out["reference"]) + ",\n")
        for key in ("cases", "framed"):
            rows = ",\n".join("  " + json.dumps(row) for row in out[key])
            f.write(f' "{key}": [\n{rows}\n ]' + (",\n" if key == "cases" else "\n"))
        f.write("}\n")
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == out
    print(f"wrote {len(cases)} cases, {len(out['framed'])} framed to {path}")


def write_entities(path):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for name, value in html.entities.html5.items():
            f.write(name + "\t" + " ".join(f"{ord(c):X}" for c in value) + "\n")
    print(f"wrote {len(html.entities.html5)} entities to {path}")


def _row(tok, n, text):
    """One cross-check row: [n, text, ids, skip]. `skip` names why the Rust port may differ:
    "mojibake" where ftfy's mojibake repair (fix_encoding, not ported) changes the text,
    "unicode" where the cleaned text holds a code point this Python's Unicode database does not
    assign (Rust's tables are newer, so letter classes, case and NFC can differ there)."""
    skip = None
    if ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False):
        skip = "mojibake"
    else:
        cleaned = simple_tokenizer.basic_clean(text)
        if any(unicodedata.category(c) == "Cn" for c in text + cleaned):
            skip = "unicode"
    return [n, text, tok.encode(text), skip]


def write_exhaustive(path):
    tok = simple_tokenizer.SimpleTokenizer()
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for cp in range(0x110000):
            ch = chr(cp)
            if unicodedata.category(ch) in ("Cn", "Cs"):
                continue
            f.write(json.dumps(_row(tok, cp, f"x{ch}x {ch}{ch.upper()} '{ch}")) + "\n")
            n += 1
    print(f"wrote {n} code points to {path}")


# Fragments the random texts of --fuzz are made of: entity and escape syntax, every kind of
# whitespace and control character ftfy or CLIP treats specially, quotes, ligatures, width forms.
FUZZ_FRAGMENTS = [
    "&", "&#", "&#x", ";", "#", "x", "X", "<", ">", "\n", "\r", "\r\n", " ", "\t", "\x0b", "\x0c",
    "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\x1b[", "\x1b[31m", "m", "3", "12",
    "99999999999", "ffff", "'", "'s", "'ll", "\u2019", "\u201c", "\u02bc", "\u0149", "\ufb01",
    "\uff21", "\uff41", "\uff76\uff9e", "\uffe3", "\u0301", "e", "E", "\u0345", "\u017f", "\x80",
    "\x81", "\x91", "\x9f", "\x00", "\x7f", "\u206a", "\ufeff", "\ufffc", "amp", "AMP", "lt",
    "eacute", "EACUTE", "SZLIG", "szlig", "notin", "not", "\u03a3", "\u0130", "a", "1", ".", ",",
    "(", ":", "<|endoftext|>", "\U0001f431", "\u00e9",
]


def write_fuzz(path, count, seed=1234):
    tok = simple_tokenizer.SimpleTokenizer()
    rng = random.Random(seed)
    names = list(html.entities.html5)
    numbers = [0, 9, 10, 13, 28, 65, 128, 133, 145, 159, 160, 173, 8217, 0xD800, 0xFDD0, 0xFFFE,
               0x1FFFF, 0x10FFFF, 0x110000]
    with open(path, "w", encoding="utf-8") as f:
        for n in range(count):
            parts = []
            for _ in range(rng.randint(1, 12)):
                r = rng.random()
                if r < 0.15:
                    parts.append("&" + rng.choice(names))
                elif r < 0.2:
                    parts.append("&" + rng.choice(names).upper())
                elif r < 0.25:
                    parts.append("&#%d;" % rng.choice(numbers + [rng.randint(0, 0x11000)]))
                elif r < 0.3:
                    parts.append("&#x%x;" % rng.randint(0, 0x3000))
                elif r < 0.33:
                    parts.append(chr(rng.randint(0x80, 0x3000)))
                else:
                    parts.append(rng.choice(FUZZ_FRAGMENTS))
            f.write(json.dumps(_row(tok, n, "".join(parts))) + "\n")
    print(f"wrote {count} random texts to {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/golden/tokenizer.json")
    ap.add_argument("--entities", metavar="PATH")
    ap.add_argument("--exhaustive", metavar="PATH")
    ap.add_argument("--fuzz", metavar="PATH")
    ap.add_argument("--fuzz-count", type=int, default=40000)
    args = ap.parse_args()
    if args.entities:
        write_entities(args.entities)
    elif args.exhaustive:
        write_exhaustive(args.exhaustive)
    elif args.fuzz:
        write_fuzz(args.fuzz, args.fuzz_count)
    else:
        write_golden(args.out)


if __name__ == "__main__":
    main()
