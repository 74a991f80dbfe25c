"""Build PRM training / dev / test data (JSONL) and ProcessBench-format eval files.

Sources (each one function returning a list of :class:`Example`):

* PRMBench items: the correct ``original_process`` (all steps positive) and the
  ``modified_process`` whose ``error_steps`` (1-based) are wrong.
* GSM8K train and MATH train reference solutions split into steps, plus automatic corruptions
  (wrong arithmetic result, swapped operation, dropped operand / condition, misread number,
  wrong final answer) as negatives; the first corrupted step and all later steps are labelled 0.
* On-policy samples (``--onpolicy FILE``, the results JSONL of ``edgetts run``): candidates split
  on blank lines, labelled by their final answer (correct: all steps 1; wrong: last step 0,
  earlier steps unlabelled).

Splits are made per problem (never per item), so a problem's variants never cross splits.
Outputs, under ``--out`` (default ``work/prm``): ``{train,dev,test}.jsonl`` with one example per
line ``{id, source, question, steps, labels}`` (labels: 1 correct, 0 wrong, -1 unlabelled) and
``pb_{dev,test}_{prmbench,gsm8k,math}.json`` in the ProcessBench format
``{id, generator, problem, steps, final_answer_correct, label}``.
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import json
import random
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgetts.prompts import split_steps

DATA = Path("/work/shared/data")
DEV_FRAC = 0.08  # share of problems (by hash) in the dev split
TEST_FRAC = 0.08  # and in the test split
NUM = r"-?\$?\d[\d,]*(?:\.\d+)?"
EQ_RE = re.compile(rf"(?P<lhs>{NUM}(?:\s*[-+*/x×]\s*{NUM})+)\s*=\s*(?P<rhs>-?\$?\d[\d,]*(?:\.\d+)?)")
NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w])")


@dataclass
class Example:
    """One solution with per-step labels (1 correct, 0 wrong, -1 unknown)."""

    id: str
    group: str  # problem key used for splitting
    source: str
    question: str
    steps: list[str]
    labels: list[int]
    kind: str = "clean"
    meta: dict = field(default_factory=dict)

    @property
    def first_error(self) -> int:
        """0-based index of the first wrong step, or -1."""
        return next((i for i, v in enumerate(self.labels) if v == 0), -1)


def split_of(group: str, dev_frac: float, test_frac: float) -> str:
    """Deterministic split from a hash of the problem key."""
    h = int(hashlib.sha1(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < test_frac:
        return "test"
    if h < test_frac + dev_frac:
        return "dev"
    return "train"


def as_list(x: object) -> list:
    """PRMBench fields may be lists or Python-literal strings of lists."""
    return ast.literal_eval(x) if isinstance(x, str) else list(x)


def load_prmbench(pattern: str = str(DATA / "prmbench_train" / "*.jsonl")) -> list[Example]:
    """PRMBench: one clean example per original process, one per modified process."""
    out: list[Example] = []
    seen: set[str] = set()
    for f in sorted(glob.glob(pattern)):
        for line in open(f, encoding="utf-8"):
            d = json.loads(line)
            q, idx = d.get("original_question") or d["question"], d["idx"]
            orig = [s.strip() for s in as_list(d["original_process"])]
            if idx not in seen and orig:
                seen.add(idx)
                out.append(Example(f"{idx}-orig", idx, "prmbench", q, orig, [1] * len(orig)))
            mod = [s.strip() for s in as_list(d["modified_process"])]
            errs = [int(e) for e in as_list(d["error_steps"])]
            if not mod or not errs or min(errs) < 1 or min(errs) > len(mod):
                continue
            first = min(errs) - 1
            labels = [1 if i < first else 0 for i in range(len(mod))]
            mq = d.get("modified_question") or q
            out.append(
                Example(
                    f"{idx}-{d['classification']}", idx, "prmbench", mq, mod, labels, kind=d["classification"]
                )
            )
    return out


def gsm8k_steps(answer: str) -> list[str]:
    """GSM8K reference -> steps: one per line, calculator annotations removed."""
    body, _, final = answer.partition("####")
    lines = [re.sub(r"<<[^>]*>>", "", ln).strip() for ln in body.strip().split("\n")]
    steps = [ln for ln in lines if ln]
    steps.append(f"The answer is {final.strip()}.")
    return steps


def math_steps(solution: str, max_steps: int = 12) -> list[str]:
    """MATH reference -> steps: paragraphs, else sentences outside $...$ math."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", solution) if p.strip()]
    if len(paras) > 1:
        return paras[:max_steps]
    sents, buf, in_math = [], "", False
    i = 0
    while i < len(solution):
        ch = solution[i]
        buf += ch
        if ch == "$" and (i == 0 or solution[i - 1] != "\\"):
            in_math = not in_math
        if (
            not in_math
            and ch in ".!?"
            and i + 1 < len(solution)
            and solution[i + 1] == " "
            and len(buf.strip()) > 20
        ):
            sents.append(buf.strip())
            buf = ""
        i += 1
    if buf.strip():
        sents.append(buf.strip())
    # Merge into at most max_steps steps.
    while len(sents) > max_steps:
        j = min(range(len(sents) - 1), key=lambda k: len(sents[k]) + len(sents[k + 1]))
        sents[j : j + 2] = [sents[j] + " " + sents[j + 1]]
    return sents


def _num(s: str) -> float:
    return float(s.replace("$", "").replace(",", ""))


def _fmt(x: float) -> str:
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else f"{x:.2f}".rstrip("0").rstrip(".")


def _safe_eval(expr: str) -> float | None:
    expr = expr.replace("$", "").replace(",", "").replace("x", "*").replace("×", "*")
    if not re.fullmatch(r"[\d.+\-*/ ()]+", expr):
        return None
    try:
        return float(eval(expr, {"__builtins__": {}}))  # noqa: S307 - digits/operators only
    except Exception:
        return None


def _perturb(x: float, rng: random.Random) -> float:
    """A plausible wrong value: off by a small amount, a factor, or a digit slip."""
    choice = rng.random()
    if choice < 0.4:
        y = x + rng.choice([-1, 1]) * rng.choice([1, 2, 3, 5, 10])
    elif choice < 0.7:
        y = x * rng.choice([2, 0.5, 10, 1.5])
    else:
        s = _fmt(x)
        digits = [i for i, c in enumerate(s) if c.isdigit()]
        i = rng.choice(digits)
        s = s[:i] + str((int(s[i]) + rng.randint(1, 9)) % 10) + s[i + 1 :]
        y = float(s)
    return y if abs(y - x) > 1e-9 else x + 1


def corrupt_step(step: str, question: str, rng: random.Random) -> tuple[str, str] | None:
    """Corrupt one step; return (new_step, kind) or None when nothing applies."""
    eqs = [m for m in EQ_RE.finditer(step) if _safe_eval(m["lhs"]) is not None]
    eqs = [m for m in eqs if abs(_safe_eval(m["lhs"]) - _num(m["rhs"])) < 1e-6 * max(1, abs(_num(m["rhs"])))]
    kinds = ["misread"]
    if eqs:
        kinds += ["arith", "arith", "swap_op", "drop_operand"]
    kind = rng.choice(kinds)
    if kind == "misread":
        nums = list(NUMBER_RE.finditer(step))
        if not nums:
            return None
        m = rng.choice(nums)
        new = _fmt(_perturb(_num(m.group()), rng))
        return step[: m.start()] + new + step[m.end() :], "misread_number"
    m = rng.choice(eqs)
    lhs, rhs = m["lhs"], m["rhs"]
    if kind == "arith":
        new_eq = f"{lhs} = {_fmt(_perturb(_num(rhs), rng))}"
    elif kind == "swap_op":
        ops = [i for i, c in enumerate(lhs) if c in "+-*/x×" and i > 0 and lhs[i - 1] in " 0123456789"]
        if not ops:
            return None
        i = rng.choice(ops)
        rep = {"+": "-", "-": "+", "*": "+", "x": "+", "×": "+", "/": "*"}[lhs[i]]
        new_lhs = lhs[:i] + rep + lhs[i + 1 :]
        val = _safe_eval(new_lhs)
        if val is None or abs(val - _num(rhs)) < 1e-9:
            return None
        new_eq = f"{new_lhs} = {_fmt(val)}"
    else:  # drop_operand: forget one quantity (a dropped condition), recompute consistently
        parts = re.split(r"(\s*[-+*/x×]\s*)", lhs)
        if len(parts) < 5:  # need at least three operands to drop one and keep an operation
            new_eq = f"{parts[0]} = {_fmt(_perturb(_num(rhs), rng))}"
        else:
            drop = rng.randrange(1, len(parts) // 2 + 1)
            keep = parts[: 2 * drop - 1] + parts[2 * drop + 1 :]
            new_lhs = "".join(keep).strip()
            val = _safe_eval(new_lhs)
            if val is None or abs(val - _num(rhs)) < 1e-9:
                return None
            new_eq = f"{new_lhs} = {_fmt(val)}"
    return step[: m.start()] + new_eq + step[m.end() :], kind


def corrupt(ex: Example, rng: random.Random, n: int) -> list[Example]:
    """Up to ``n`` corrupted copies of a clean example, each with one first error."""
    out: list[Example] = []
    tries = 0
    while len(out) < n and tries < 4 * n:
        tries += 1
        k = rng.randrange(len(ex.steps))
        res = corrupt_step(ex.steps[k], ex.question, rng)
        if res is None or res[0].strip() == ex.steps[k].strip():
            continue
        new_step, kind = res
        steps = ex.steps[:k] + [new_step] + ex.steps[k + 1 :]
        labels = [1 if i < k else 0 for i in range(len(steps))]
        out.append(
            Example(f"{ex.id}-c{len(out)}", ex.group, ex.source, ex.question, steps, labels, kind=kind)
        )
    return out


def load_reference(name: str, limit: int, n_corrupt: int, seed: int) -> list[Example]:
    """GSM8K / MATH train references (clean) plus their corruptions."""
    rng = random.Random(seed)
    path = DATA / ("gsm8k_train.jsonl" if name == "gsm8k" else "math_train.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    rng.shuffle(rows)
    out: list[Example] = []
    for i, d in enumerate(rows[:limit]):
        if name == "gsm8k":
            q, steps = d["question"], gsm8k_steps(d["answer"])
        else:
            q, steps = d["problem"], math_steps(d["solution"])
        if len(steps) < 2:
            continue
        clean = Example(
            f"{name}-{i}",
            f"{name}-{hashlib.sha1(q.encode()).hexdigest()[:10]}",
            name,
            q,
            steps,
            [1] * len(steps),
        )
        out.append(clean)
        out.extend(corrupt(clean, rng, n_corrupt))
    return out


def load_onpolicy(path: str, source: str = "onpolicy") -> list[Example]:
    """``edgetts run`` results: candidates labelled by their final answer (outcome labels)."""
    out: list[Example] = []
    for n, line in enumerate(open(path, encoding="utf-8")):
        d = json.loads(line)
        q = d.get("question") or d.get("problem") or ""
        for j, c in enumerate(d.get("candidates", [])):
            steps = [s.strip() for s in split_steps(c["text"]) if s.strip()]
            if not steps or c.get("correct") is None:
                continue
            labels = [1] * len(steps) if c["correct"] else [-1] * (len(steps) - 1) + [0]
            out.append(
                Example(
                    f"{source}-{n}-{j}",
                    f"{source}-{d.get('id', n)}",
                    source,
                    q,
                    steps,
                    labels,
                    kind="outcome",
                )
            )
    return out


def to_processbench(exs: list[Example]) -> list[dict]:
    """ProcessBench items from fully labelled examples."""
    return [
        {
            "id": e.id,
            "generator": f"{e.source}:{e.kind}",
            "problem": e.question,
            "steps": e.steps,
            "final_answer_correct": e.first_error < 0,
            "label": e.first_error,
        }
        for e in exs
        if -1 not in e.labels
    ]


def write_jsonl(path: Path, exs: list[Example]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in exs:
            d = asdict(e)
            d.pop("meta")
            f.write(json.dumps(d) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="work/prm")
    ap.add_argument("--gsm8k-limit", type=int, default=7473)
    ap.add_argument("--math-limit", type=int, default=7500)
    ap.add_argument("--n-corrupt", type=int, default=1, help="corruptions per reference solution")
    ap.add_argument("--onpolicy", action="append", default=[], help="edgetts run results JSONL")
    ap.add_argument("--dev-frac", type=float, default=DEV_FRAC)
    ap.add_argument("--test-frac", type=float, default=TEST_FRAC)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaders: dict[str, Callable[[], list[Example]]] = {
        "prmbench": load_prmbench,
        "gsm8k": lambda: load_reference("gsm8k", args.gsm8k_limit, args.n_corrupt, args.seed),
        "math": lambda: load_reference("math", args.math_limit, args.n_corrupt, args.seed + 1),
    }
    for k, p in enumerate(args.onpolicy):
        loaders[f"onpolicy{k}"] = lambda p=p, k=k: load_onpolicy(p, f"onpolicy{k}")
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    for name, load in loaders.items():
        exs = load()
        per: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
        for e in exs:
            per[split_of(e.group, args.dev_frac, args.test_frac)].append(e)
        for s, lst in per.items():
            splits[s].extend(lst)
            if s != "train" and not name.startswith("onpolicy"):
                (out / f"pb_{s}_{name}.json").write_text(json.dumps(to_processbench(lst)))
        print(name, {s: len(v) for s, v in per.items()}, "neg", sum(e.first_error >= 0 for e in exs))
    random.Random(args.seed).shuffle(splits["train"])
    for s, lst in splits.items():
        write_jsonl(out / f"{s}.jsonl", lst)
    print({s: len(v) for s, v in splits.items()}, "->", out)


if __name__ == "__main__":
    main()
