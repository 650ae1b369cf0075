#!/usr/bin/env python3
# Pinned reference (see reference/requirements-wildcards.txt), CPython 3.11.7:
#   dynamicprompts==0.31.0, pyparsing==3.1.4, PyYAML==6.0.4, Jinja2==3.1.6
#   .venv/bin/pip install --no-deps -r reference/requirements-wildcards.txt
"""Golden data for the Rust `wildcards` crate (Dynamic Prompts template language).

Writes tests/fixtures/golden/wildcards.json, an object with
  "reference": pinned versions,
  "rng":    CPython `random.Random` draws (floats as repr() strings, exact) for several seeds (seeding, random(), getrandbits,
            randrange/randint, choice, choices with weights and cum_weights, sample, shuffle),
  "parse":  [{"template", "tree"} | {"template", "error": {"loc"}}]: dynamicprompts' command
            tree for hand-picked and generated templates, in a neutral JSON form (see `dump`),
  "cases":  [{"name", "template", "mode", ...,  "prompts", "unknown"} | {..., "error"}]:
            prompts generated from tests/fixtures/wildcards/ in random mode (re-seeded per
            prompt, as the A1111 extension does), combinatorial mode (full and capped) and
            cyclical mode, with the unknown-wildcard warnings the library logged.

Run from the repository root: .venv/bin/python reference/gen_wildcard_goldens.py
The output is byte-identical from run to run.
"""

import importlib.metadata
import json
import logging
import random
import signal
import sys
from pathlib import Path

import pyparsing
import yaml

import warnings

from dynamicprompts.commands import (
    LiteralCommand,
    SequenceCommand,
    VariantCommand,
    WildcardCommand,
    WrapCommand,
)
from dynamicprompts.commands.variable_commands import (
    VariableAccessCommand,
    VariableAssignmentCommand,
)
from dynamicprompts.enums import SamplingMethod
from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator
from dynamicprompts.parser.parse import parse
from dynamicprompts.sampling_context import SamplingContext
from dynamicprompts.wildcards import WildcardManager

ROOT = Path(__file__).resolve().parent.parent
WILDCARDS = ROOT / "tests" / "fixtures" / "wildcards"
OUT = ROOT / "tests" / "fixtures" / "golden" / "wildcards.json"

METHOD = {
    None: None,
    SamplingMethod.RANDOM: "~",
    SamplingMethod.CYCLICAL: "@",
    SamplingMethod.COMBINATORIAL: "!",
}


def dump(cmd):
    """Command tree -> JSON. Each node is a one-key object naming its kind."""
    if isinstance(cmd, str):
        return {"text": cmd}
    if cmd is None:
        return None
    if isinstance(cmd, LiteralCommand):
        return {"lit": cmd.literal}
    if isinstance(cmd, SequenceCommand):
        return {"seq": [dump(t) for t in cmd.tokens]}
    if isinstance(cmd, VariantCommand):
        return {
            "variant": {
                "options": [[repr(float(o.weight)), dump(o.value)] for o in cmd.variants],
                "min": cmd.min_bound,
                "max": cmd.max_bound,
                "sep": cmd.separator,
                "method": METHOD[cmd.sampling_method],
            }
        }
    if isinstance(cmd, WildcardCommand):
        return {
            "wildcard": {
                "path": dump(cmd.wildcard),
                "method": METHOD[cmd.sampling_method],
                "params": [[k, dump(v)] for k, v in cmd.variables.items()],
            }
        }
    if isinstance(cmd, VariableAssignmentCommand):
        return {
            "set": {
                "name": cmd.name,
                "value": dump(cmd.value),
                "immediate": cmd.immediate,
                "overwrite": cmd.overwrite,
            }
        }
    if isinstance(cmd, VariableAccessCommand):
        return {"get": {"name": cmd.name, "default": dump(cmd.default)}}
    if isinstance(cmd, WrapCommand):
        return {"wrap": {"wrapper": dump(cmd.wrapper), "inner": dump(cmd.inner)}}
    raise TypeError(type(cmd))


def error_of(exc):
    if isinstance(exc, pyparsing.ParseBaseException):
        return {"kind": "parse", "loc": exc.loc}
    if isinstance(exc, KeyError):
        return {"kind": "undefined_variable"}
    if isinstance(exc, RecursionError):
        return {"kind": "recursion"}
    return {"kind": type(exc).__name__}


# ---------------------------------------------------------------------------------------------
# RNG


def rng_goldens():
    out = []
    for seed in [0, 1, 42, 12345, 2**32 - 1, 2**32, 2**32 + 5, 2**63 - 1, 2**64 - 1, -7]:
        r = random.Random(seed)
        ops = []
        ops.append(["random", [repr(r.random()) for _ in range(5)]])
        ops.append(["getrandbits", [[k, r.getrandbits(k)] for k in [1, 5, 31, 32, 33, 53, 64]]])
        ops.append(["randrange", [[n, r.randrange(n)] for n in [1, 2, 3, 7, 100, 2**31 + 1, 2**40, 10**15]]])
        ops.append(["randint", [[a, b, r.randint(a, b)] for a, b in [(1, 6), (0, 0), (3, 9), (0, 1), (5, 5)]]])
        ops.append(["choice", [r.choice(list(range(7))) for _ in range(6)]])
        w = [0.5, 0.1, 0.3, 0.1]
        ops.append(["choices_weights", {"weights": w, "k": 10, "out": r.choices(range(4), weights=w, k=10)}])
        cw = [1, 2, 5, 5, 9.5]
        ops.append(["choices_cum", {"cum_weights": cw, "k": 10, "out": r.choices(range(5), cum_weights=cw, k=10)}])
        ops.append(["choices_plain", {"n": 6, "k": 8, "out": r.choices(range(6), k=8)}])
        ops.append(["sample", [[n, k, r.sample(range(n), k)] for n, k in [(20, 5), (5, 5), (1000, 10), (100, 30), (3, 0)]]])
        x = list(range(10))
        r.shuffle(x)
        ops.append(["shuffle", x])
        ops.append(["random", [repr(r.random()) for _ in range(3)]])
        out.append({"seed": seed, "ops": ops})
    return out


# ---------------------------------------------------------------------------------------------
# Parser corpus

PARSE_TEMPLATES = [
    "", "a", "hello world", "  lead and trail  ", "{a|b|c}", "{ a | b }", "{}", "{|}", "{a|}",
    "A {|red|blue} rose", "{0.5::summer|0.1::autumn|.3::winter|2.::spring|7::x}",
    "{+1.5::a|-0.5::b|1.5:c}", "{2$$a|b|c}", "{ 2$$ a | b | c }", "{2$$ and $$a|b|c}",
    "{1-3$$a|b|c}", "{-2$$a|b}", "{2-$$a|b|c}", "{3-1$$a|b|c}", "{0-1$$a|b}", "{4$$a|b|c}",
    "{2$$|$$A|B|C}", "{~a|b}", "{@a|b}", "{!a|b}", "{ ~ 2$$a|b}", "{~2-3$$ / $$a|b|c|d}",
    "{a|{b|c}} x", "{[a|b]|c}", "__colors__", "__~colors__", "__@colors__", "__!colors__",
    "__colors*__", "__animals/*__", "__*/mammals__", "__colors-warm__s!", "a__b__c",
    "__{colors|animals/mammals}__", "__${cat}__", "__${cat:animals/birds}__", "__ ${ c : x } __",
    "__tmpl(season=winter)__", "__tmpl (season = winter , other= {a|b} )__", "__t(a=1,b=x y)__",
    "__t(=x)__", "__t(a)__", "${c=red} ${c}", "${c=!{red|blue}} ${c} and ${c}",
    "${ c ?= ! x } y", "${season:summer} in ${season:summer}", "${a:}", "${ a : b c }",
    "%{beautiful ..., 8k$$a {cat|dog}}", "%{ no marker $$ z}", "%{$$x}", "{%{a...b$$c}|d}",
    "red # blue\ngreen", "#ff0000 red", "x {a|b}// c", "x {a|b} // c", "http://example.com",
    "a /* c */ b", "{a|b}/* c */d", "{a /* c */|b}", "\\{b\\}", "}", "a } b", "a|b",
    "(masterpiece:1.2), [cat:dog:0.5], [a|b], <lora:foo:0.8> AND x :1.1", "a   b\n\t{c  c|d}  ",
    "a 50% discount", "costs $5", "snake__case", "a {b", "{a|b", "${x", "%{a$$b", "a {b}} c",
    "__init__ method", "__a(b=c__", "{a|b}#c\nd", "{ # c\n a|b}", "{a| # c\n b}", "__a#b__",
    "{2 $$a|b}", "{2$$ # x\n$$a|b}", "{a\n|\nb}", "__a b__", "__a__b__c__", "___x___",
    "{a|__b__|c}", "{2$$__colors__}", "{2$$__c__|__c__}", "${a=${b}}${b=x}${a}",
    "%{%{a...b$$c}...$$d}", "{a|b}{c|d}", "${x=1}${y=2}", "${x=1}", "$${a}", "{a$$b}",
    "{1$$}", "{1$$x$$}", "{$$a}", "__a(x=1)b__", "__a (x=1)__", "__{a|b} (x=1)__",
    "__${a:{x|y}}__", "x\r\ny", "tab\there", "ünïcödé {ä|ö}", "emoji 😀 {🐱|🐶}",
]

# Fragments for generated templates: every construct, its pieces and the characters that
# decide what parses.
FRAGMENTS = [
    "a", "b", " ", "  ", "\n", "{", "}", "|", "$$", "$", "${", "%{", "__", "_", "#", "//", "/*",
    "*/", "(", ")", "=", "!", "~", "@", "::", "1", "2", ".", "-", ",", ":", "?", "x y", "...",
    "{a|b}", "__c__", "${v}", "${v=w}", "%{p...s$$", "2$$", "1-2$$", "\t",
]


def generated_templates(n, seed):
    r = random.Random(seed)
    out = []
    for _ in range(n):
        k = r.randint(1, 8)
        out.append("".join(r.choice(FRAGMENTS) for _ in range(k)))
    return out


def parse_goldens():
    out = []
    seen = set()
    for t in PARSE_TEMPLATES + generated_templates(600, 2024):
        if t in seen:
            continue
        seen.add(t)
        try:
            out.append({"template": t, "tree": dump(parse(t))})
        except Exception as exc:  # noqa: BLE001 - the kind of failure is the golden
            out.append({"template": t, "error": error_of(exc)})
    return out


# ---------------------------------------------------------------------------------------------
# Generation cases


class UnknownCollector(logging.Handler):
    def __init__(self):
        super().__init__()
        self.unknown = []

    def emit(self, record):
        msg = record.getMessage()
        prefix = "No values found for wildcard "
        if msg.startswith(prefix):
            self.unknown.append(eval(msg[len(prefix):]))  # the name is a repr() string


COLLECTOR = UnknownCollector()
logging.getLogger("dynamicprompts").addHandler(COLLECTOR)
logging.getLogger("dynamicprompts").propagate = False


def manager():
    return WildcardManager(WILDCARDS)


def run_random(template, seeds, ignore_whitespace=False):
    gen = RandomPromptGenerator(manager(), seed=seeds[0], ignore_whitespace=ignore_whitespace)
    return gen.generate(template, len(seeds), seeds=seeds)


def run_unlinked(template, seed, count, ignore_whitespace=False):
    gen = RandomPromptGenerator(manager(), seed=seed, ignore_whitespace=ignore_whitespace)
    return gen.generate(template, count)


def run_combinatorial(template, max_prompts, seed, ignore_whitespace=False):
    gen = CombinatorialPromptGenerator(manager(), ignore_whitespace=ignore_whitespace)
    # Random parts inside a combinatorial run draw from this RNG (an unseeded global in the
    # library); seeding it makes those draws part of the golden.
    gen._context.rand.seed(seed)
    return gen.generate(template, max_prompts)


def run_cyclical(template, count, seed, ignore_whitespace=False):
    ctx = SamplingContext(
        default_sampling_method=SamplingMethod.CYCLICAL,
        wildcard_manager=manager(),
        ignore_whitespace=ignore_whitespace,
        rand=random.Random(seed),
    )
    return [str(p) for p in ctx.sample_prompts(template, count)]


RANDOM_SEED_SETS = [
    [1, 2, 3, 4, 5, 6],
    [42 + i for i in range(6)],
    [12345] * 3,
    [4294967294 + i for i in range(4)],
    [2**40 + 7, 0, 987654321],
]

TEMPLATES = [
    # Variants, weights, bounds, separators.
    "A {red|green|blue} {square|circle}",
    "I {love|hate} {New York|Chicago} in {June|July|August}",
    "{a|{b|c}} x",
    "A {|red|blue} rose",
    "{a|b|}",
    "{}",
    "{ a | b }",
    "{ 2$$ a | b | c }",
    "{1-2$$ and $$a|b|c}",
    "{2-$$a|b|c}",
    "{0-1$$a|b}",
    "{-2$$a|b|c|d}",
    "{3-1$$a|b|c}",
    "{4$$a|b|c}",
    "x {2$$|$$A|B|C}",
    "{0::a|1::b}",
    "{0.5::summer|0.1::autumn|0.3::winter|0.1::spring}",
    "{2::x|{a|b}}",
    "{2$$3::a|1::b|1::c}",
    "{2$$1::a|2::b|1::c|3::d}",
    "{a|a|b} and {2$$a|a|b}",
    "{[a|b]|c}",
    "(masterpiece:1.2), [cat:dog:0.5], [a|b], <lora:foo:0.8> AND x :1.1",
    "{1-3$$a|b|c}",
    "{0$$a|b}",
    "{a {b|c}|d {e|f}} and {g|h}",
    # Wildcards and the directory layout.
    "__colors__",
    "__colors*__",
    "__animals/*__",
    "__*/mammals__",
    "__mammals__",
    "__deep/**__",
    "__thing__",
    "__seasons__ is coming",
    "__mix__",
    "{2$$__animals/*__}",
    "{2$$__animals/mammals__|__animals/mammals__}",
    "__finnish__ / __dutch__",
    "__people/finnish__",
    "__weighted__",
    "__flags__",
    "__single__ __nested/inner/leaf__ __nested/*__",
    "__styles/painters__",
    "__styles/moods/*__",
    "__lists/list__",
    "__secret__",
    "a __nope__ b",
    "__colors-warm__s!",
    "__{colors|animals/mammals}__ and __{colors|animals/mammals}__",
    "__~colors__ __@colors-warm__",
    "__@animals/*__ {@x|y|z}",
    "{3$$__colors__}",
    "{2$$ & $$__styles/painters__}",
    "__spaces__|",
    "__animals\\\\mammals__ __/animals//birds/__",
    "__../colors__",
    # Variables and parameterised templates.
    "${c=!{red|blue|green}} ${c} and ${c}",
    "${c={red|blue|green}} ${c} and ${c}",
    "${season:summer} in ${season:summer}",
    "__tmpl(season=winter)__",
    "__tmpl(season={spring|fall})__",
    "${s=boy} __ex__",
    "__ex__",
    "__params/pair(a=1, b={x|y})__",
    "${who=__animals/mammals__} ${who} meets ${who}",
    "${w=!__colors-warm__}${w}/${w}",
    "__immediate__",
    "__lazy__",
    "${a=x}${a?=y}${a}",
    "${cat=animals/mammals} __${cat}__",
    "__${kind:animals/birds}__",
    # Samplers and modes.
    "{@red|green|blue} {@square|circle}",
    "{red|green|blue} {~square|circle}",
    "{~a|b} {~c|d}",
    "{!a|b} {c|d}",
    "__cyc__",
    "{@2$$a|b|c}",
    "{a|{@b|c}} {@d|e}",
    # Wrap command.
    "%{beautiful ..., 8k$$a {cat|dog}}",
    "%{no marker$$z}",
    "%{__wrappers__$${cat|dog}}",
    "%{{pre...post|x…y}$$in}",
    # Comments and whitespace.
    "red # blue\ngreen",
    "#ff0000 red",
    "x {a|b}// c",
    "http://example.com {a|b}",
    "\\{b\\}",
    "a   b\n\t{c  c|d}  ",
    "{a\n|\nb} {c|d}",
    # Mixed features (draw order, buffered weighted draws, equal parts, nesting).
    "{~a|b} and {~a|b} {x|y}",
    "__weighted__ __weighted__ {a|b}",
    "{2$$__weighted__}",
    "{a|b}{1-2$$__animals/*__|z}",
    "%{{wide ...|tall …}$$__animals/mammals__} {@1|2}",
    "${x={a|b}}{${x}|${x} ${x}}",
    "__params/pair(a={@x|y}, b=__colors-warm__)__",
    "{@__animals/mammals__|__colors-warm__}",
    "__~animals/*__ __!colors-warm__",
    "{!a|b} {~c|d} {@e|f}",
    "{3$$a|b|c|d|e|f}",
    "{1-10$$ | $$__colors*__}",
    "__nested/inner/leaf__ {2-3$$x|y|z}",
    "{2$$a {b|c}|d {e|f}}",
    "__{@colors|animals/mammals}__",
    "{0.5::__colors-warm__|2::{x|y} __mammals__|}",
    # Errors.
    "hello ${x}",
    "__tmpl__",
    "__selfref__",
    "a {b",
    "${a=x}",
    "${a=}${a}",
]

IGNORE_WS = {"a   b\n\t{c  c|d}  ", "__spaces__|", "{a\n|\nb} {c|d}", "%{beautiful ..., 8k$$a {cat|dog}}"}
CAPPED = {
    "I {love|hate} {New York|Chicago} in {June|July|August}": 5,
    "a __nope__ b": 5,
    "__people/finnish__": 2,
    "{1-3$$a|b|c}": 7,
    "{red|green|blue} {~square|circle}": 2,
    "__colors*__": 3,
}


class Hang(Exception):
    """The library loops forever on some templates (e.g. a cyclical variant with no selection)."""


def _alarm(signum, frame):
    raise Hang()


def capture(fn):
    COLLECTOR.unknown = []
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    try:
        prompts = fn()
        return {"prompts": prompts, "unknown": sorted(set(COLLECTOR.unknown))}
    except Hang:
        return {"error": {"kind": "hang"}}
    except Exception as exc:  # noqa: BLE001 - the kind of failure is the golden
        return {"error": error_of(exc)}
    finally:
        signal.alarm(0)


def case_goldens():
    cases = []
    for i, t in enumerate(TEMPLATES):
        ws_options = [False, True] if t in IGNORE_WS else [False]
        for ws in ws_options:
            base = {"template": t, "ignore_whitespace": ws}
            for seeds in RANDOM_SEED_SETS[: 2 if i % 3 else 5]:
                cases.append({**base, "mode": "random", "seeds": seeds,
                              **capture(lambda: run_random(t, seeds, ws))})
            cases.append({**base, "mode": "combinatorial", "max": 1000, "seed": 7,
                          **capture(lambda: run_combinatorial(t, 1000, 7, ws))})
            if t in CAPPED:
                cases.append({**base, "mode": "combinatorial", "max": CAPPED[t], "seed": 11,
                              **capture(lambda: run_combinatorial(t, CAPPED[t], 11, ws))})
            cases.append({**base, "mode": "cyclical", "count": 7, "seed": 3,
                          **capture(lambda: run_cyclical(t, 7, 3, ws))})
            if i % 4 == 0:
                cases.append({**base, "mode": "unlinked", "count": 5, "seed": 99,
                              **capture(lambda: run_unlinked(t, 99, 5, ws))})
    return cases


def main():
    sys.setrecursionlimit(1000)
    # The library warns when a finite sampler is nested in a non-finite one; not part of the golden.
    warnings.simplefilter("ignore")
    data = {
        "reference": {
            "python": sys.version.split()[0],
            "dynamicprompts": importlib.metadata.version("dynamicprompts"),
            "pyparsing": pyparsing.__version__,
            "pyyaml": yaml.__version__,
        },
        "rng": rng_goldens(),
        "parse": parse_goldens(),
        "cases": case_goldens(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One entry per line: compact, yet a regenerated golden diffs case by case.
    parts = []
    for key in sorted(data):
        value = data[key]
        if isinstance(value, list):
            rows = ",\n".join(json.dumps(v, ensure_ascii=False, sort_keys=True) for v in value)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    text = "{\n" + ",\n".join(parts) + "\n}\n"
    OUT.write_text(text, encoding="utf-8")
    n_err = sum(1 for c in data["cases"] if "error" in c)
    print(f"wrote {OUT.relative_to(ROOT)}: {len(data['cases'])} cases ({n_err} errors), "
          f"{len(data['parse'])} parse trees, {len(data['rng'])} rng seeds")


if __name__ == "__main__":
    main()
