"""Generate ``arithmetic.jsonl``: templated GSM8K-style grade-school word problems (CPU-demo stand-in).

Each row is ``{"id", "question", "answer", "final", "template", "split"}``. ``answer`` is a worked solution
in the GSM8K format: one sentence per step, every computation written as ``expr = <<expr=value>>value``
(the calculator annotation), and a last line ``#### <final>``. Numbers are small and every intermediate
value is exact (integers, or a terminating decimal for hours).

Deterministic: a fixed seed, templates used round-robin, duplicates re-drawn, and every fifth row (index % 5
== 4) is ``"eval"``. Re-running rewrites the packaged file byte for byte::

    python -m frpo.data.make_arithmetic            # rewrite src/frpo/data/arithmetic.jsonl
    python -m frpo.data.make_arithmetic --check    # exit 1 if the packaged file differs
"""

from __future__ import annotations

import ast
import operator
import random
import sys
from fractions import Fraction
from pathlib import Path

from frpo.data.generator import generator_main, render  # noqa: F401  (render: re-exported)

__all__ = ["SEED", "N_PROBLEMS", "TEMPLATES", "generate", "render", "main"]

SEED = 8813
N_PROBLEMS = 400
DEFAULT_OUT = Path(__file__).resolve().parent / "arithmetic.jsonl"

NAMES = [
    ("Amara", "she"), ("Ben", "he"), ("Chloe", "she"), ("Diego", "he"), ("Elena", "she"), ("Farid", "he"),
    ("Grace", "she"), ("Hiro", "he"), ("Ines", "she"), ("Jonah", "he"), ("Keiko", "she"), ("Liam", "he"),
    ("Maya", "she"), ("Nikhil", "he"), ("Olivia", "she"), ("Pavel", "he"), ("Rosa", "she"), ("Samir", "he"),
    ("Tara", "she"), ("Victor", "he"), ("Wendy", "she"), ("Yusuf", "he"), ("Zoe", "she"), ("Omar", "he"),
]
PRONOUNS = {"she": ("she", "her", "her", "herself"), "he": ("he", "him", "his", "himself")}

ITEMS = [  # (plural noun, price range in dollars)
    ("notebooks", (2, 6)), ("pens", (1, 3)), ("apples", (1, 2)), ("books", (6, 15)), ("T-shirts", (8, 20)),
    ("mugs", (4, 9)), ("sandwiches", (3, 7)), ("candles", (2, 8)), ("toy cars", (3, 10)), ("plant pots", (5, 12)),
    ("bags of rice", (4, 10)), ("movie tickets", (7, 14)), ("jars of honey", (5, 11)), ("packs of cards", (2, 5)),
]
VEHICLES = [("train", (60, 120)), ("bus", (40, 70)), ("car", (50, 90)), ("truck", (45, 80)), ("ferry", (20, 40))]
GOODS = ["bike", "guitar", "tablet", "skateboard", "telescope", "pair of skates", "camera", "tent"]
BAKED = ["cookies", "cupcakes", "brownies", "muffins", "pretzels", "oat bars"]
SALE_ITEMS = ["jacket", "pair of boots", "backpack", "lamp", "coffee maker", "rug", "watch", "desk chair"]


def _num(x) -> str:
    """Exact number as GSM8K writes it: integers bare, other values as short decimals."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    return format(float(x), "g")


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expr: str) -> Fraction:
    """Exact value of an annotation expression (numbers, + - * /, parentheses)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"unsupported expression: {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


def _calc(expr: str, value) -> str:
    """``expr = <<expr=value>>value`` with the value checked against the expression."""
    v = _num(value)
    assert _evaluate(expr) == Fraction(value), (expr, value)
    return f"{expr} = <<{expr}={v}>>{v}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _person(rng: random.Random, exclude: str | None = None):
    name, p = rng.choice([n for n in NAMES if n[0] != exclude])
    return (name, *PRONOUNS[p])


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


# Each template: rng -> (question, [step sentences], final answer)

def t_shopping_total(rng):
    name, he, _him, _his, _ = _person(rng)
    (item1, (lo1, hi1)), (item2, (lo2, hi2)) = rng.sample(ITEMS, 2)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    p, q = rng.randint(lo1, hi1), rng.randint(lo2, hi2)
    ap, bq = a * p, b * q
    question = (f"{name} buys {a} {item1} for ${p} each and {b} {item2} for ${q} each. "
                f"How much does {he} spend in total?")
    steps = [
        f"{name} spends {_calc(f'{a}*{p}', ap)} dollars on {item1}.",
        f"{_cap(he)} spends {_calc(f'{b}*{q}', bq)} dollars on {item2}.",
        f"In total, {he} spends {_calc(f'{ap}+{bq}', ap + bq)} dollars.",
    ]
    return question, steps, ap + bq


def t_change(rng):
    name, he, _him, _his, _ = _person(rng)
    item, (lo, hi) = rng.choice(ITEMS)
    a, p = rng.randint(2, 8), rng.randint(lo, hi)
    cost = a * p
    m = cost + rng.randint(1, 30)
    m = ((m + 4) // 5) * 5  # a round amount of money
    question = (f"{name} has ${m}. {_cap(he)} buys {a} {item} that cost ${p} each. "
                f"How much money does {he} have left?")
    steps = [
        f"The {item} cost {_calc(f'{a}*{p}', cost)} dollars.",
        f"{name} has {_calc(f'{m}-{cost}', m - cost)} {'dollar' if m - cost == 1 else 'dollars'} left.",
    ]
    return question, steps, m - cost


def t_distance(rng):
    vehicle, (lo, hi) = rng.choice(VEHICLES)
    v1 = rng.randint(lo // 5, hi // 5) * 5
    v2 = rng.randint(lo // 5, hi // 5) * 5
    h1, h2 = rng.randint(1, 4), rng.randint(1, 3)
    d1, d2 = v1 * h1, v2 * h2
    question = (f"A {vehicle} travels at {v1} kilometers per hour for {_plural(h1, 'hour')} and then at {v2} "
                f"kilometers per hour for {h2} more {'hour' if h2 == 1 else 'hours'}. "
                f"How many kilometers does it travel in total?")
    steps = [
        f"In the first part of the trip, the {vehicle} travels {_calc(f'{v1}*{h1}', d1)} kilometers.",
        f"In the second part, it travels {_calc(f'{v2}*{h2}', d2)} kilometers.",
        f"Altogether it travels {_calc(f'{d1}+{d2}', d1 + d2)} kilometers.",
    ]
    return question, steps, d1 + d2


def t_trip_minutes(rng):
    name, he, _him, _his, _ = _person(rng)
    modes = [("cycles", (10, 12, 16, 20)), ("walks", (4, 6)), ("rows", (4, 8)), ("drives", (40, 60, 80))]
    mode, speeds = rng.choice(modes)
    v = rng.choice(speeds)
    minutes = rng.choice((30, 45, 75, 90, 120, 135, 150, 180))
    hours = Fraction(minutes, 60)
    d = v * hours
    if d.denominator != 1:  # keep the distance a whole number of kilometers
        minutes, hours = 120, Fraction(2)
        d = v * hours
    d = int(d)
    question = (f"{name} {mode} {d} kilometers at a steady {v} kilometers per hour. "
                f"How many minutes does the trip take?")
    steps = [
        f"The trip takes {_calc(f'{d}/{v}', hours)} hours.",
        f"In minutes, that is {_calc(f'{_num(hours)}*60', minutes)} minutes.",
    ]
    return question, steps, minutes


def t_sharing(rng):
    name, he, _him, _his, himself = _person(rng)
    food = rng.choice(BAKED)
    f, each, kept = rng.randint(2, 8), rng.randint(2, 9), rng.randint(1, 6)
    n = kept + f * each
    rest = n - kept
    question = (f"{name} baked {n} {food}. {_cap(he)} kept {kept} for {himself} and shared the rest equally among "
                f"{f} friends. How many {food} did each friend get?")
    steps = [
        f"{name} shared {_calc(f'{n}-{kept}', rest)} {food}.",
        f"Each friend got {_calc(f'{rest}/{f}', each)} {food}.",
    ]
    return question, steps, each


def t_ages_difference(rng):
    a_name = _person(rng)[0]
    b_name = _person(rng, exclude=a_name)[0]
    d, b, y = rng.randint(2, 12), rng.randint(4, 30), rng.randint(2, 10)
    a_now = b + d
    x = a_now + y
    question = (f"{a_name} is {d} years older than {b_name}. In {y} years, {a_name} will be {x} years old. "
                f"How old is {b_name} now?")
    steps = [
        f"{a_name} is {_calc(f'{x}-{y}', a_now)} years old now.",
        f"So {b_name} is {_calc(f'{a_now}-{d}', b)} years old.",
    ]
    return question, steps, b


def t_ages_times(rng):
    a_name = _person(rng)[0]
    b_name = _person(rng, exclude=a_name)[0]
    k, b, y = rng.randint(2, 4), rng.randint(3, 12), rng.randint(2, 9)
    a = k * b
    question = (f"{a_name} is {k} times as old as {b_name}. If {b_name} is {b} years old now, "
                f"what will the sum of their ages be in {y} years?")
    steps = [
        f"{a_name} is {_calc(f'{k}*{b}', a)} years old now.",
        f"In {y} years, {a_name} will be {_calc(f'{a}+{y}', a + y)} "
        f"and {b_name} will be {_calc(f'{b}+{y}', b + y)}.",
        f"The sum of their ages will be {_calc(f'{a + y}+{b + y}', a + b + 2 * y)}.",
    ]
    return question, steps, a + b + 2 * y


def t_bakery(rng):
    food = rng.choice(BAKED)
    t, m = rng.randint(3, 9), rng.choice((6, 8, 10, 12, 24))
    total = t * m
    s = rng.randint(total // 5, total // 2)
    if (total - s) % 2:
        s += 1
    rem = total - s
    half = rem // 2
    question = (f"A bakery makes {t} trays of {food} with {m} {food} on each tray. It sells {s} {food} in the "
                f"morning and half of the remaining {food} in the afternoon. How many {food} are left at the end "
                f"of the day?")
    steps = [
        f"The bakery makes {_calc(f'{t}*{m}', total)} {food}.",
        f"After the morning, {_calc(f'{total}-{s}', rem)} {food} remain.",
        f"In the afternoon it sells {_calc(f'{rem}/2', half)} {food}.",
        f"So {_calc(f'{rem}-{half}', rem - half)} {food} are left.",
    ]
    return question, steps, rem - half


def t_wages(rng):
    name, he, _him, _his, _ = _person(rng)
    w, h, d, h2 = rng.randint(9, 25), rng.randint(3, 8), rng.randint(3, 5), rng.randint(2, 6)
    hd = h * d
    total_h = hd + h2
    question = (f"{name} earns ${w} an hour. {_cap(he)} works {h} hours a day on {d} weekdays and {h2} hours on "
                f"Saturday. How much does {he} earn in the week?")
    steps = [
        f"On weekdays, {name} works {_calc(f'{h}*{d}', hd)} hours.",
        f"With Saturday, {he} works {_calc(f'{hd}+{h2}', total_h)} hours in total.",
        f"{_cap(he)} earns {_calc(f'{total_h}*{w}', total_h * w)} dollars.",
    ]
    return question, steps, total_h * w


def t_savings(rng):
    name, he, him, _his, _ = _person(rng)
    good = rng.choice(GOODS)
    s, weeks, have = rng.randint(3, 15), rng.randint(3, 12), rng.randint(5, 60)
    need = s * weeks
    c = have + need
    question = (f"{name} wants to buy a {good} that costs ${c}. {_cap(he)} already has ${have} "
                f"and saves ${s} each week. How many weeks will it take {him} to have enough money?")
    steps = [
        f"{name} still needs {_calc(f'{c}-{have}', need)} dollars.",
        f"At {s} dollars a week, that takes {_calc(f'{need}/{s}', weeks)} weeks.",
    ]
    return question, steps, weeks


def t_fence(rng):
    length, width, c = rng.randint(5, 25), rng.randint(3, 15), rng.randint(2, 9)
    if width == length:
        width -= 1
    perim = 2 * (length + width)
    place = rng.choice(("garden", "playground", "vegetable patch", "dog run", "field"))
    question = (f"A rectangular {place} is {length} meters long and {width} meters wide. Fencing costs ${c} per "
                f"meter. How much does it cost to fence the whole {place}?")
    steps = [
        f"The perimeter is {_calc(f'2*({length}+{width})', perim)} meters.",
        f"The fence costs {_calc(f'{perim}*{c}', perim * c)} dollars.",
    ]
    return question, steps, perim * c


FRACTIONS = [
    (1, 2, "Half"), (1, 3, "One third"), (1, 4, "One quarter"), (2, 5, "Two fifths"), (3, 4, "Three quarters"),
    (2, 3, "Two thirds"), (1, 5, "One fifth"),
]


def t_fractions(rng):
    p, q, word = rng.choice(FRACTIONS)
    n = q * rng.randint(3, 10)
    walk = n * p // q
    rest = n - walk
    bus = rng.randint(0, rest - 2)  # at least two are driven
    expr = f"{n}/{q}" if p == 1 else f"{n}*{p}/{q}"
    question = (f"A class has {n} students. {word} of them walk to school, and {bus} of the others come by bus. "
                f"The rest are driven by their parents. How many students are driven?")
    steps = [
        f"{_calc(expr, walk)} students walk.",
        f"That leaves {_calc(f'{n}-{walk}', rest)} students.",
        f"So {_calc(f'{rest}-{bus}', rest - bus)} students are driven.",
    ]
    return question, steps, rest - bus


def t_discount(rng):
    name, he, _him, _his, _ = _person(rng)
    item = rng.choice(SALE_ITEMS)
    price = 20 * rng.randint(2, 10)
    pct = rng.choice((10, 20, 25, 50))
    coupon = rng.randint(1, 5) * 2
    disc = price * pct // 100
    sale = price - disc
    question = (f"A {item} costs ${price}. It is on sale for {pct}% off, and {name} also uses a ${coupon} coupon "
                f"on the sale price. How much does {he} pay?")
    steps = [
        f"The discount is {_calc(f'{price}*{pct}/100', disc)} dollars.",
        f"The sale price is {_calc(f'{price}-{disc}', sale)} dollars.",
        f"After the coupon, {name} pays {_calc(f'{sale}-{coupon}', sale - coupon)} dollars.",
    ]
    return question, steps, sale - coupon


def t_reading(rng):
    name, he, _him, _his, _ = _person(rng)
    p, q, w = rng.randint(5, 30), rng.randint(10, 50), rng.randint(2, 6)
    wk, we = 5 * p, 2 * q
    week = wk + we
    question = (f"{name} reads {p} pages every weekday and {q} pages on each day of the weekend. How many pages "
                f"does {he} read in {w} weeks?")
    steps = [
        f"On weekdays, {name} reads {_calc(f'5*{p}', wk)} pages a week, "
        f"and on weekends {_calc(f'2*{q}', we)} pages.",
        f"That is {_calc(f'{wk}+{we}', week)} pages a week.",
        f"In {w} weeks, {he} reads {_calc(f'{week}*{w}', week * w)} pages.",
    ]
    return question, steps, week * w


TEMPLATES = {
    "shopping_total": t_shopping_total, "change": t_change, "distance": t_distance, "trip_minutes": t_trip_minutes,
    "sharing": t_sharing, "ages_difference": t_ages_difference, "ages_times": t_ages_times, "bakery": t_bakery,
    "wages": t_wages, "savings": t_savings, "fence": t_fence, "fractions": t_fractions, "discount": t_discount,
    "reading": t_reading,
}


def generate(n: int = N_PROBLEMS, seed: int = SEED) -> list[dict]:
    """The problems: templates round-robin, duplicate questions re-drawn, index % 5 == 4 -> eval."""
    rng = random.Random(seed)
    names = list(TEMPLATES)
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n:
        template = names[len(rows) % len(names)]
        question, steps, final = TEMPLATES[template](rng)
        if question in seen:
            continue
        seen.add(question)
        i = len(rows)
        rows.append({
            "id": f"arith-{i:03d}",
            "question": question,
            "answer": "\n".join([*steps, f"#### {final}"]),
            "final": final,
            "template": template,
            "split": "eval" if i % 5 == 4 else "train",
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    return generator_main(argv, generate, DEFAULT_OUT, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
