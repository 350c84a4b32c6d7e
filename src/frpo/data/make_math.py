"""Generate ``math_problems.jsonl``: templated MATH-style problems with boxed answers (CPU-demo stand-in).

Each row is ``{"id", "problem", "solution", "answer", "level", "type", "template", "split"}``: the fields of the
MATH data set (``level`` an int 1-5 as in MATH500, ``type`` one of MATH's subject names) plus ``id``, the
generating ``template`` and ``split``.
``solution`` is a short worked text in LaTeX whose last ``\\boxed{...}`` holds exactly ``answer``. Answers come
in the forms MATH uses, so the verifier's equivalences matter: integers (some negative), common fractions
``\\frac{p}{q}`` in lowest terms (sign in front) and terminating decimals. All arithmetic is exact (``Fraction``).

There are 12 templates (below, each with its subject and level), 20 problems each, 240 in all; templates are used
round-robin (round ``r = i // 12`` holds one problem of each) and a duplicate problem is re-drawn. Row ``i`` is
``"eval"`` iff ``(i % 12) % 6 == r % 6``: two templates per round, rotating, so every template has 3 or 4 eval
problems (40 eval, 200 train). Deterministic: a fixed seed, so re-running rewrites the packaged file byte for
byte::

    python -m frpo.data.make_math            # rewrite src/frpo/data/math_problems.jsonl
    python -m frpo.data.make_math --check    # exit 1 if the packaged file differs
"""

from __future__ import annotations

import math
import random
import sys
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

from frpo.data.generator import generator_main, render  # noqa: F401  (render: re-exported)

__all__ = ["SEED", "N_PROBLEMS", "TEMPLATES", "generate", "render", "main", "latex_number"]

SEED = 20813
N_PROBLEMS = 240
DEFAULT_OUT = Path(__file__).resolve().parent / "math_problems.jsonl"


def latex_number(x, form: str = "auto") -> str:
    """An exact number as MATH writes answers: an integer bare; otherwise ``\\frac{p}{q}`` (``form="frac"``, sign
    in front) or a terminating decimal (``form="decimal"``). ``"auto"`` means frac for non-integers."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    if form == "decimal":
        d = x.denominator
        while d % 2 == 0:
            d //= 2
        while d % 5 == 0:
            d //= 5
        assert d == 1, f"{x} has no terminating decimal"
        text = format(Decimal(x.numerator) / Decimal(x.denominator), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _linear(a: int, b: int, var: str = "x") -> str:
    """``ax + b`` in LaTeX, with ``1x``, ``+ -3`` and ``+ 0`` written the usual way."""
    head = {1: var, -1: f"-{var}"}.get(a, f"{a}{var}")
    if b == 0:
        return head
    return f"{head} {'+' if b > 0 else '-'} {abs(b)}"


def _p(v: int) -> str:
    """``v``, in parentheses when negative (for substituting into an expression)."""
    return f"({v})" if v < 0 else str(v)


def _nonzero(rng: random.Random, lo: int, hi: int) -> int:
    while True:
        v = rng.randint(lo, hi)
        if v != 0:
            return v


# Each template: rng -> (problem, solution body without the final sentence, answer string).

def t_linear_equation(rng):
    a, c = rng.sample([v for v in range(-9, 10) if v != 0], 2)
    b, d = rng.randint(-20, 20), rng.randint(-20, 20)
    x = Fraction(d - b, a - c)
    ans = latex_number(x)
    problem = (f"Solve for $x$: ${_linear(a, b)} = {_linear(c, d)}$. Express your answer as a common fraction if "
               "it is not an integer.")
    body = (f"Collecting the $x$ terms on the left and the constants on the right gives ${_linear(a - c, 0)} = "
            f"{d - b}$, so $x = {ans}$.")
    return problem, body, ans


def t_slope(rng):
    while True:
        x1, y1, x2, y2 = (rng.randint(-12, 12) for _ in range(4))
        if x1 != x2 and y1 != y2:
            break
    m = Fraction(y2 - y1, x2 - x1)
    ans = latex_number(m)
    problem = (f"What is the slope of the line through the points $({x1}, {y1})$ and $({x2}, {y2})$? Express your "
               "answer as a common fraction if it is not an integer.")
    body = f"The slope is $\\frac{{{y2} - {_p(y1)}}}{{{x2} - {_p(x1)}}} = \\frac{{{y2 - y1}}}{{{x2 - x1}}}"
    if latex_number(m) != f"\\frac{{{y2 - y1}}}{{{x2 - x1}}}":
        body += f" = {ans}"
    body += "$."
    return problem, body, ans


def t_composition(rng):
    a, b = _nonzero(rng, -6, 6), rng.randint(-10, 10)
    c, k = rng.randint(1, 9), rng.randint(-5, 5)
    g = k * k - c
    value = a * g + b
    problem = f"Let $f(x) = {_linear(a, b)}$ and $g(x) = x^2 - {c}$. What is $f(g({k}))$?"
    body = (f"First $g({k}) = {_p(k)}^2 - {c} = {g}$. Then $f({g}) = {a}\\cdot {_p(g)} {'+' if b >= 0 else '-'} "
            f"{abs(b)} = {value}$.")
    return problem, body, str(value)


def t_two_red(rng):
    r, b = rng.randint(2, 9), rng.randint(1, 9)
    n = r + b
    p = Fraction(r * (r - 1), n * (n - 1))
    problem = (f"A bag holds {r} red marbles and {b} blue marbles. Two marbles are drawn at random without "
               "replacement. What is the probability that both are red? Express your answer as a common "
               "fraction.")
    body = (f"The first marble is red with probability $\\frac{{{r}}}{{{n}}}$, and then the second with "
            f"probability $\\frac{{{r - 1}}}{{{n - 1}}}$. The product is "
            f"$\\frac{{{r * (r - 1)}}}{{{n * (n - 1)}}} = {latex_number(p)}$.")
    return problem, body, latex_number(p)


def t_choose(rng):
    n = rng.randint(5, 14)
    k = rng.randint(2, min(5, n - 2))
    things = rng.choice(["students for a committee", "books to take on a trip", "toppings for a pizza",
                         "songs for a playlist", "flowers for a bouquet"])
    value = math.comb(n, k)
    problem = f"In how many ways can {k} {things} be chosen from {n} different ones, if order does not matter?"
    body = (f"This is $\\binom{{{n}}}{{{k}}} = \\frac{{{n}!}}{{{k}!\\,{n - k}!}} = {value}$.")
    return problem, body, str(value)


def t_gcd_lcm(rng):
    g = rng.randint(2, 12)
    a, b = g * rng.randint(2, 15), g * rng.randint(2, 15)
    while a == b:
        b = g * rng.randint(2, 15)
    if rng.random() < 0.5:
        value = math.lcm(a, b)
        problem = f"What is the least common multiple of {a} and {b}?"
        body = (f"Since $\\gcd({a}, {b}) = {math.gcd(a, b)}$, the least common multiple is "
                f"$\\frac{{{a}\\cdot {b}}}{{{math.gcd(a, b)}}} = {value}$.")
    else:
        value = math.gcd(a, b)
        problem = f"What is the greatest common divisor of {a} and {b}?"
        body = f"By the Euclidean algorithm, $\\gcd({a}, {b}) = {value}$."
    return problem, body, str(value)


def t_power_mod(rng):
    a, k, m = rng.randint(2, 19), rng.randint(10, 60), rng.randint(5, 13)
    value = pow(a, k, m)
    problem = f"What is the remainder when ${a}^{{{k}}}$ is divided by ${m}$?"
    r = a % m
    body = (f"Modulo ${m}$, ${a} \\equiv {r}$, and reducing successive powers of ${r}$ modulo ${m}$ gives "
            f"${a}^{{{k}}} \\equiv {value} \\pmod{{{m}}}$.")
    return problem, body, str(value)


def t_fraction_sum(rng):
    b, d = rng.randint(2, 12), rng.randint(2, 12)
    a, c = rng.randint(1, 2 * b), rng.randint(1, 2 * d)
    op = rng.choice(["+", "-"])
    value = Fraction(a, b) + Fraction(c, d) if op == "+" else Fraction(a, b) - Fraction(c, d)
    lcd = math.lcm(b, d)
    top = a * (lcd // b) + (1 if op == "+" else -1) * c * (lcd // d)
    problem = (f"Compute $\\frac{{{a}}}{{{b}}} {op} \\frac{{{c}}}{{{d}}}$. Express your answer in lowest terms.")
    body = (f"Over the common denominator ${lcd}$: $\\frac{{{a * (lcd // b)}}}{{{lcd}}} {op} "
            f"\\frac{{{c * (lcd // d)}}}{{{lcd}}} = \\frac{{{top}}}{{{lcd}}} = {latex_number(value)}$.")
    return problem, body, latex_number(value)


def t_percent(rng):
    pct = Fraction(rng.choice([5, 10, 15, 20, 25, 30, 35, 40, 45, 60, 75, 125, 150]), 1)
    if rng.random() < 0.3:
        pct += Fraction(1, 2)
    n = rng.randint(2, 60) * rng.choice([2, 4])
    value = pct * n / 100
    pct_text = latex_number(pct, "decimal")
    problem = f"What is ${pct_text}\\%$ of ${n}$? Express your answer as a decimal if it is not an integer."
    body = f"${pct_text}\\%$ of ${n}$ is ${latex_number(pct / 100, 'decimal')} \\cdot {n} = " \
           f"{latex_number(value, 'decimal')}$."
    return problem, body, latex_number(value, "decimal")


def t_mean(rng):
    count = rng.choice([4, 5, 8])
    values = [rng.randint(1, 99) for _ in range(count)]
    mean = Fraction(sum(values), count)
    listing = ", ".join(f"${v}$" for v in values)
    problem = (f"What is the arithmetic mean of {listing}? Express your answer as a decimal if it is not an "
               "integer.")
    body = (f"The sum is ${' + '.join(map(str, values))} = {sum(values)}$, and dividing by ${count}$ gives "
            f"${latex_number(mean, 'decimal')}$.")
    return problem, body, latex_number(mean, "decimal")


def t_roots_product(rng):
    a = _nonzero(rng, -7, 9)
    b, c = rng.randint(-15, 15), _nonzero(rng, -20, 20)
    which = rng.choice(["product", "sum"])
    value = Fraction(c, a) if which == "product" else Fraction(-b, a)
    quad = f"{'' if a == 1 else '-' if a == -1 else a}x^2"
    if b:
        quad += f" {'+' if b > 0 else '-'} {'' if abs(b) == 1 else abs(b)}x"
    quad += f" {'+' if c > 0 else '-'} {abs(c)}"
    problem = (f"What is the {which} of the roots of ${quad} = 0$? Express your answer as a common fraction if "
               "it is not an integer.")
    rule = "\\frac{c}{a}" if which == "product" else "-\\frac{b}{a}"
    body = (f"By Vieta's formulas, the {which} of the roots of $ax^2 + bx + c = 0$ is ${rule}$, here "
            f"${latex_number(value)}$.")
    return problem, body, latex_number(value)


TRIPLES = [(3, 4, 5), (5, 12, 13), (8, 15, 17), (7, 24, 25), (20, 21, 29), (9, 40, 41)]


def t_right_triangle(rng):
    p0, q0, h0 = rng.choice(TRIPLES)
    if rng.random() < 0.5:
        s = rng.randint(1, 4)
        p, q, h = p0 * s, q0 * s, h0 * s
        problem = f"A right triangle has legs of length ${p}$ and ${q}$. What is the length of its hypotenuse?"
        body = (f"By the Pythagorean theorem, the hypotenuse is $\\sqrt{{{p}^2 + {q}^2}} = \\sqrt{{{h * h}}} = "
                f"{h}$.")
        return problem, body, str(h)
    # the primitive triple times k/2, k mostly odd: lengths in halves, so that many areas are decimals
    scale = Fraction(rng.choice([1, 2, 3, 5, 7]), 2)
    p, q, h = (latex_number(v * scale, "decimal") for v in (p0, q0, h0))
    area = Fraction(p) * Fraction(q) / 2
    problem = (f"A right triangle has a leg of length ${p}$ and a hypotenuse of length ${h}$. What is its area? "
               "Express your answer as a decimal if it is not an integer.")
    body = (f"The other leg is $\\sqrt{{{h}^2 - {p}^2}} = {q}$, so the area is "
            f"$\\frac{{1}}{{2}}\\cdot {p}\\cdot {q} = {latex_number(area, 'decimal')}$.")
    return problem, body, latex_number(area, "decimal")


#: name -> (template, MATH subject, level)
TEMPLATES = {
    "linear_equation": (t_linear_equation, "Algebra", 2),
    "slope": (t_slope, "Algebra", 2),
    "composition": (t_composition, "Algebra", 3),
    "two_red": (t_two_red, "Counting & Probability", 3),
    "choose": (t_choose, "Counting & Probability", 2),
    "gcd_lcm": (t_gcd_lcm, "Number Theory", 1),
    "power_mod": (t_power_mod, "Number Theory", 4),
    "fraction_sum": (t_fraction_sum, "Prealgebra", 2),
    "percent": (t_percent, "Prealgebra", 1),
    "mean": (t_mean, "Prealgebra", 2),
    "roots": (t_roots_product, "Intermediate Algebra", 3),
    "right_triangle": (t_right_triangle, "Geometry", 3),
}


def generate(n: int = N_PROBLEMS, seed: int = SEED) -> list[dict]:
    """The problems: templates round-robin, duplicate problems re-drawn, two rotating templates per round eval."""
    rng = random.Random(seed)
    names = list(TEMPLATES)
    rows: list[dict] = []
    seen: set[str] = set()
    while len(rows) < n:
        name = names[len(rows) % len(names)]
        template, subject, level = TEMPLATES[name]
        problem, body, answer = template(rng)
        if problem in seen:
            continue
        seen.add(problem)
        i = len(rows)
        rows.append({
            "id": f"math-{i:03d}",
            "problem": problem,
            "solution": f"{body} The answer is $\\boxed{{{answer}}}$.",
            "answer": answer,
            "level": level,
            "type": subject,
            "template": name,
            "split": "eval" if (i % len(names)) % 6 == (i // len(names)) % 6 else "train",
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    return generator_main(argv, generate, DEFAULT_OUT, __doc__.splitlines()[0])


if __name__ == "__main__":
    sys.exit(main())
