"""The shaping lab: does shaping make a teacher's traces worth less to a copier, at what cost?

One tiny teacher learns a scratchpad task (``task.py``: 2-digit addition, or five one-digit
operands summed in any order). For each seed, a proxy student (1 layer, 32 dims) is trained briefly
on a few teacher traces, and its held-out task gradient is cached. Then, for each condition, the
teacher answers the same N training problems:

* ``unshaped``: sampling at the serving temperature (the reference);
* ``temperature T``: the paper's baseline, hotter (or, at 0, greedy) sampling;
* ``antidistillation λ``: the serving temperature plus ``AntidistillationProcessor`` at strength λ
  (the first strength without the plausibility guard, ``antidistillation-raw``);
* ``antidistillation-flipped λ`` (diagnostic): the same shift with its sign flipped;
* ``anchor λ``: ``AnchorPerturbationProcessor`` (only the most important steps);
* ``summary``: unshaped traces with the scratchpad summarised away (the answer kept).

With ``keep_entropy`` every shift is rescaled to keep the serving temperature's entropy
(``processors.match_entropy``), so a condition differs from unshaped in *which* continuations it
prefers, not in how random it is.

The teacher's accuracy on those answers is the utility a customer gets; a student of another
architecture and initialisation than the proxy (2 layers, 48 dims, from scratch) is trained on the
N prompt+answer pairs and its greedy accuracy on 300 unseen problems is the skill the copier got.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable

import numpy as np
import torch

from distillguard.shaping import lab_decoupled as LD
from distillguard.shaping import task as T
from distillguard.shaping.processors import (AnchorPerturbationProcessor, AntidistillationProcessor,
                                             heldout_gradient, summarize_steps)

TEACHER = {"n_layer": 2, "n_embd": 64}
PROXY = {"n_layer": 1, "n_embd": 32}
STUDENT = {"n_layer": 2, "n_embd": 48}


def train_teacher(task: T.Task = T.ADDITION, *, steps: int = 1000, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    teacher = T.make_model(task, **TEACHER, seed=seed)
    info = T.train(task, teacher, T.fresh_traces(task, np.random.default_rng(seed)), steps=steps, lr=3e-3, seed=seed)
    info["parameters"] = sum(p.numel() for p in teacher.parameters())
    return teacher, info


def train_proxy(teacher, seed: int, *, task: T.Task = T.ADDITION, traces: int = 64,
                steps: int = 150, layers: int = 1) -> tuple[Any, list]:
    """A proxy student trained on a few teacher traces, and its held-out batches (reference traces
    of problems it never saw, loss on the trace only)."""
    rng = np.random.default_rng(1000 + seed)
    rows = task.problems(traces, rng)
    texts = [task.prompt(r) + c for r, c in zip(rows, T.generate(task, teacher, rows, temperature=1.0, seed=seed))]
    proxy = T.make_model(task, **{**PROXY, "n_layer": layers}, seed=100 + seed)
    T.train(task, proxy, texts, steps=steps, lr=3e-3, seed=seed)
    held = [task.prompt(r) + task.trace(r, rng) for r in task.problems(128, rng)]
    return proxy, [T.batch_tensors(task, held[i:i + 64]) for i in range(0, len(held), 64)]


def summary_of(completion: str) -> str:
    """The lab's summary post-processor: the traces are short, so the summary keeps no step: the
    scratchpad is returned empty, the answer stays."""
    head, _, rest = completion.partition("[")
    if "]" not in rest:
        return completion
    inner, tail = rest.split("]", 1)
    return head + "[" + summarize_steps(inner, keep=0, separator=",") + "]" + tail


def student_accuracy(pairs: np.ndarray, completions: list[str], test: np.ndarray, seed: int, steps: int,
                     task: T.Task = T.ADDITION) -> float:
    texts = [task.prompt(r) + c for r, c in zip(pairs, completions)]
    student = T.make_model(task, **STUDENT, seed=200 + seed)
    T.train(task, student, texts, steps=steps, lr=5e-3, batch=32, seed=seed)
    return T.evaluate(task, student, test)


BASE_TEMPERATURE = 0.7      # the teacher's serving temperature: ~98 % accurate samples


def run(*, seeds: int = 3, n_traces: int = 300, student_steps: int = 300, teacher_steps: int = 800,
        strengths: tuple[float, ...] = (0.05, 0.3, 1.0), anchor_strengths: tuple[float, ...] = (1.0,),
        temperatures: tuple[float, ...] = (1.0, 1.3), plausible: float = 0.05, modes: tuple[str, ...] | None = None,
        teacher_dir: str | None = None, task: T.Task = T.ADDITION, keep_entropy: bool = False,
        test_problems: int = 300, proxy_steps: int = 150, proxy_traces: int = 64, proxy_layers: int = 1,
        select_k: int = 4, anchor_counts: tuple[int, ...] = (), anchor_temperature: float = 2.0,
        first_seed: int = 0, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """``strengths``: λ of antidistillation, the first one without the plausibility guard (the
    paper's form) and the others with ``plausible``; ``keep_entropy``: every shift keeps the
    serving temperature's entropy."""
    say = progress or (lambda m: None)
    teacher, info = teacher_from(teacher_dir, teacher_steps, task)
    test = task.problems(test_problems, np.random.default_rng(12345))
    info["greedy_accuracy"] = T.evaluate(task, teacher, test)
    info["task"] = task.name
    say(f"teacher: {info}")
    rows: list[dict[str, Any]] = []
    base = BASE_TEMPERATURE
    entropy_at = base if keep_entropy else None

    def shaper(proxy, direction, s: float, guard: float = plausible) -> AntidistillationProcessor:
        return AntidistillationProcessor(proxy, strength=s, direction=direction, plausible=guard,
                                         keep_entropy_at=entropy_at)

    for seed in range(first_seed, first_seed + seeds):
        rng = np.random.default_rng(seed)
        pairs = task.problems(n_traces, rng)
        proxy, held = train_proxy(teacher, seed, task=task, steps=proxy_steps, traces=proxy_traces,
                                  layers=proxy_layers)
        direction = heldout_gradient(proxy, held)
        say(f"seed {seed} proxy held-out loss {heldout_loss(proxy, held):.4f}")
        conditions: list[tuple[str, float, list, float]] = [("unshaped", 0.0, [], base)]
        conditions += [("temperature", t, [], t) for t in temperatures]
        conditions += [("antidistillation" if i else "antidistillation-raw", s,
                        [shaper(proxy, direction, s, plausible if i else 0.0)], base) for i, s in enumerate(strengths)]
        conditions += [("anchor", s, [AnchorPerturbationProcessor(shaper(proxy, direction, s), task.step_delimiters,
                                                                  threshold=0.02, max_anchors=1)], base)
                       for s in anchor_strengths]
        # a diagnostic, not a defence: the guarded shift with its sign flipped (pro-distillation
        # direction); if it helps the student as much, the proxy's direction is not what acts
        conditions += [("antidistillation-flipped", s, [_flipped(shaper(proxy, direction, s))], base)
                       for s in strengths[1:] if modes is not None and "antidistillation-flipped" in modes]
        # sequence level (a diagnostic, k teacher samples per answer): the sample whose whole
        # completion would raise (or, flipped, lower) the proxy's held-out loss most is returned
        conditions += [(f"select{flip}", float(select_k), [proxy, direction, sign], base)
                       for flip, sign in (("", 1.0), ("-flipped", -1.0))
                       if select_k and modes is not None and f"select{flip}" in modes]
        # decoupled reasoning: the unshaped answers, their reasoning perturbed at `a` anchor steps
        conditions += [("decoupled", float(a), [], base) for a in anchor_counts]
        # ... and what a copier who checks the reasoning keeps: only the traces that add up
        conditions += [("decoupled-filtered", float(a), [], base) for a in anchor_counts
                       if modes is not None and "decoupled-filtered" in modes]
        unshaped: list[str] = []
        unshaped_seconds = 0.0
        if modes is not None:
            conditions = [c for c in conditions if c[0] in modes or c[0] == "unshaped"]
        for mode, level, procs, temp in conditions:
            start = time.perf_counter()
            extra: dict[str, Any] = {}
            if mode.startswith("decoupled"):   # the unshaped pass is the one above; only the reasoning pass runs
                completions, stats, _ = LD.completions(task, teacher, pairs, unshaped, anchors=int(level),
                                                            temperature=anchor_temperature, seed=seed,
                                                            temperature_base=base)
                start -= unshaped_seconds       # the cost of both passes
                extra = {"decoded_vs_unshaped": (stats.first_pass_tokens + stats.second_pass_tokens)
                         / max(1, stats.first_pass_tokens), "perturbed_tokens": stats.perturbed_tokens}
            elif mode.startswith("select"):
                completions = select_by_proxy(task, teacher, *procs, pairs, k=select_k, seed=seed)
            else:
                completions = T.generate(task, teacher, pairs, processors=procs, temperature=temp, seed=seed)
            seconds = time.perf_counter() - start
            tokens = sum(len(c) for c in completions)
            if mode == "unshaped":
                unshaped, unshaped_seconds = completions, seconds
            invalid = LD.invalid(task, pairs, completions)
            keep = (np.flatnonzero(np.array(invalid) == 0) if mode == "decoupled-filtered" and invalid
                    else np.arange(len(pairs)))
            if mode == "decoupled-filtered":
                extra["kept"] = int(len(keep))
            row = {**extra, "invalid": invalid, "seed": seed, "mode": mode, "level": level,
                   "teacher_accuracy": T.accuracy(task, pairs, completions),
                   "student_accuracy": student_accuracy(pairs[keep], [completions[i] for i in keep], test, seed,
                                                        student_steps, task),
                   "ms_per_token": 1000 * seconds / max(1, tokens), "completions": completions}
            rows.append(row)
            say(f"seed {seed} {mode} {level}: teacher {row['teacher_accuracy']:.3f} "
                f"student {row['student_accuracy']:.3f} ({row['ms_per_token']:.3f} ms/token)"
                + (f", kept {row['kept']}" if "kept" in row else ""))
        if modes is not None and "summary" not in modes:
            continue
        summarized = [summary_of(c) for c in unshaped]
        rows.append({"seed": seed, "mode": "summary", "level": 1.0,
                     "teacher_accuracy": T.accuracy(task, pairs, unshaped),
                     "student_accuracy": student_accuracy(pairs, summarized, test, seed, student_steps, task),
                     "ms_per_token": None, "completions": summarized})
        say(f"seed {seed} summary: student {rows[-1]['student_accuracy']:.3f}")
    return {"teacher": info, "rows": rows, "n_traces": n_traces, "student_steps": student_steps, "seeds": seeds,
            "task": task.name, "keep_entropy": keep_entropy}


def sequence_delta(task: T.Task, proxy, direction: list, texts: list[str], epsilon: float = 1e-2) -> np.ndarray:
    """Per text, the first-order change of the proxy's held-out loss if it trained on the whole
    completion: ``(log p_{θ+εg}(completion) − log p_{θ−εg}(completion)) / 2ε`` summed over the
    completion's tokens (the per-token Δ of antidistillation sampling, but for the tokens a choice
    leads to as well as the choice itself)."""
    from distillguard.shaping.processors import _Perturbed

    ids, labels = T.batch_tensors(task, texts)
    mask = labels[:, 1:] != -100
    out = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            model = _Perturbed(proxy, direction, sign * epsilon).model
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=(ids != task.pad).long()).logits[:, :-1].float(), -1)
            tok = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
            out.append((tok * mask).sum(-1))
    return ((out[0] - out[1]) / (2 * epsilon)).numpy()


def select_by_proxy(task: T.Task, teacher, proxy, direction: list, sign: float, pairs: np.ndarray, *, k: int = 4,
                    seed: int = 0) -> list[str]:
    """Per problem, ``k`` teacher samples at the serving temperature, and the one with the largest
    ``sign · sequence_delta`` (``sign`` +1: antidistillation; −1: its flipped diagnostic)."""
    samples = [T.generate(task, teacher, pairs, temperature=BASE_TEMPERATURE, seed=10_000 * (seed + 1) + j)
               for j in range(k)]
    scores = np.stack([sequence_delta(task, proxy, direction, [task.prompt(r) + c for r, c in zip(pairs, cs)])
                       for cs in samples])
    best = np.argmax(sign * scores, axis=0)
    return [samples[b][i] for i, b in enumerate(best)]


def _flipped(processor: AntidistillationProcessor) -> AntidistillationProcessor:
    processor.strength = -processor.strength
    return processor


def detectability_auc(shaped: list[str], unshaped: list[str], seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression on character uni/bigram counts and length
    telling shaped answers from unshaped ones (0.5: indistinguishable)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict
    from sklearn.metrics import roc_auc_score
    from scipy.sparse import hstack, csr_matrix

    texts = shaped + unshaped
    y = np.array([1] * len(shaped) + [0] * len(unshaped))
    counts = CountVectorizer(analyzer="char", ngram_range=(1, 2), lowercase=False).fit_transform(texts)
    x = hstack([counts, csr_matrix(np.array([[len(t)] for t in texts], dtype=float) / 40.0)]).tocsr()
    scores = cross_val_predict(LogisticRegression(max_iter=2000, C=1.0), x, y, cv=5, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, scores))


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per condition: mean ± sd over seeds of teacher and student accuracy, the student's gain
    relative to unshaped traces, cost per token relative to unshaped, and detectability."""
    rows = result["rows"]
    keys = sorted({(r["mode"], r["level"]) for r in rows}, key=lambda k: (
        ["unshaped", "temperature", "antidistillation-raw", "antidistillation", "antidistillation-flipped", "select",
         "select-flipped", "anchor", "decoupled", "decoupled-filtered", "summary"].index(k[0]), k[1]))
    base = {r["seed"]: r for r in rows if r["mode"] == "unshaped"}
    out = []
    for mode, level in keys:
        group = [r for r in rows if (r["mode"], r["level"]) == (mode, level)]
        teacher = np.array([r["teacher_accuracy"] for r in group])
        student = np.array([r["student_accuracy"] for r in group])
        ratio = np.array([r["student_accuracy"] / max(1e-9, base[r["seed"]]["student_accuracy"]) for r in group])
        cost = [r["ms_per_token"] / base[r["seed"]]["ms_per_token"] for r in group if r["ms_per_token"]]
        auc = (None if mode == "unshaped" else float(np.mean([
            detectability_auc(r["completions"], base[r["seed"]]["completions"], r["seed"]) for r in group])))
        verify = (None if mode == "unshaped" or any(r.get("invalid") is None for r in group) else float(np.mean([
            LD.verify_auc(r["invalid"], base[r["seed"]]["invalid"]) for r in group])))
        decoded = [r["decoded_vs_unshaped"] for r in group if "decoded_vs_unshaped" in r]
        out.append({"mode": mode, "level": level, "teacher_accuracy": float(teacher.mean()), "verify_auc": verify,
                    "decoded_vs_unshaped": float(np.mean(decoded)) if decoded else None,
                    "teacher_sd": float(teacher.std()), "student_accuracy": float(student.mean()),
                    "student_sd": float(student.std()), "student_gain_vs_unshaped": float(ratio.mean()),
                    "cost_vs_unshaped": float(np.mean(cost)) if cost else None, "detect_auc": auc})
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'mode':<17}{'level':>6}  {'teacher acc':>14}  {'student acc':>14}  {'gain/unshaped':>13}  "
             f"{'cost x':>6}  {'AUC':>5}  {'check AUC':>9}"]
    for s in summary:
        cost = f"{s['cost_vs_unshaped']:.2f}" if s["cost_vs_unshaped"] else "-"
        auc = f"{s['detect_auc']:.2f}" if s["detect_auc"] is not None else "-"
        check = f"{s['verify_auc']:.2f}" if s.get("verify_auc") is not None else "-"
        if s.get("decoded_vs_unshaped") is not None:
            cost += f" ({s['decoded_vs_unshaped']:.2f} tok)"
        lines.append(f"{s['mode']:<17}{s['level']:>6g}  {s['teacher_accuracy']:>8.3f}±{s['teacher_sd']:.3f}  "
                     f"{s['student_accuracy']:>8.3f}±{s['student_sd']:.3f}  {s['student_gain_vs_unshaped']:>13.2f}  "
                     f"{cost:>6}  {auc:>5}  {check:>9}")
    return "\n".join(lines)


def _torch_threads() -> None:
    torch.set_num_threads(1)


def teacher_from(path: str | None, steps: int = 800, task: T.Task = T.ADDITION) -> tuple[Any, dict[str, Any]]:
    """The lab teacher, loaded from ``path`` when it holds one, else trained (and saved there)."""
    from pathlib import Path

    if path and (Path(path) / "config.json").exists():
        from transformers import GPT2LMHeadModel

        from distillguard.errors import BadInputError

        teacher = GPT2LMHeadModel.from_pretrained(path).eval()
        if teacher.config.n_positions != task.max_len:
            raise BadInputError(f"the teacher in {path} was not trained on the {task.name} task", field="teacher_dir")
        return teacher, {"loaded_from": str(path)}
    teacher, info = train_teacher(task, steps=steps)
    if path:
        teacher.save_pretrained(path)
    return teacher, info


def composition(teacher, *, task: T.Task = T.ADDITION, seed: int = 0, n_traces: int = 600, strength: float = 0.3, plausible: float = 0.05,
                student_steps: int = 400, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Shaped answers are still watermarked: the teacher answers one account ("farm") with
    antidistillation ahead of transformers' KGW processor (the account's cohort key); the text
    detector and the open-weights radioactivity test (with the teacher as reference) must name
    that cohort, for a student trained on the shaped, watermarked traces, and name nothing for a
    control student trained on shaped traces without the watermark."""
    import hashlib

    from transformers import WatermarkLogitsProcessor

    from distillguard.watermark.keys import KeySet
    from distillguard.watermark.kgw import KGWDetector
    from distillguard.watermark.radioactivity import reading_mode

    say = progress or (lambda m: None)
    keys = KeySet(secret=hashlib.sha256(f"shaping-lab-{seed}".encode()).digest(), cohorts=8)
    cohort = keys.cohort_of("farm")
    pairs = task.problems(n_traces, np.random.default_rng(500 + seed))
    proxy, held = train_proxy(teacher, seed, task=task)
    direction = heldout_gradient(proxy, held)
    out: dict[str, Any] = {"cohort": keys.label(cohort), "strength": strength, "n_traces": n_traces}
    test = task.problems(300, np.random.default_rng(12345))
    detector = KGWDetector([keys.cohort_key(c) for c in range(keys.total)], task.vocab, keys.greenlist_ratio)
    for kind, watermark in (("watermarked", True), ("control", False)):
        procs: list = [AntidistillationProcessor(proxy, strength=strength, direction=direction, plausible=plausible)]
        if watermark:
            procs.append(WatermarkLogitsProcessor(vocab_size=task.vocab, device="cpu", **keys.watermarking_config(cohort)))
        completions = T.generate(task, teacher, pairs, processors=procs, temperature=BASE_TEMPERATURE, seed=seed)
        texts = [task.prompt(r) + c for r, c in zip(pairs, completions)]
        ids = [np.asarray(task.encode(c), dtype=np.int64) for c in completions]
        text_scores = [detector.score_pooled(ids, c).p_value for c in range(keys.total)]
        student = T.make_model(task, **STUDENT, seed=300 + seed)
        T.train(task, student, texts, steps=student_steps, lr=5e-3, batch=32, seed=seed)
        radio = reading_mode(student, T.Tokenizer(task), texts, keys, reference=teacher).to_dict()
        best = radio["cohorts"][0]
        out[kind] = {"teacher_accuracy": T.accuracy(task, pairs, completions),
                     "student_accuracy": T.evaluate(task, student, test),
                     "text_best_cohort": keys.label(int(np.argmin(text_scores))),
                     "text_p": float(min(text_scores)), "radioactivity_best_cohort": best["label"],
                     "radioactivity_p_corrected": best["p_value_corrected"], "verdict": radio["verdict"],
                     "controls_below_0.01": radio["controls"]["share_below_0.01"]}
        say(f"composition {kind}: {out[kind]}")
    return out


def generation_cost(teacher, *, task: T.Task = T.ADDITION, strength: float = 0.3, n: int = 300, repeats: int = 5,
                    plausible: float = 0.05, keep_entropy: bool = False) -> dict[str, float]:
    """Milliseconds per generated token, unshaped vs antidistillation vs anchor, on the same
    problems: repeats interleaved and the fastest kept (robust on a shared machine)."""
    pairs = task.problems(n, np.random.default_rng(7))
    proxy, held = train_proxy(teacher, 0, task=task)
    direction = heldout_gradient(proxy, held)
    shaper = AntidistillationProcessor(proxy, strength=strength, direction=direction, plausible=plausible,
                                       keep_entropy_at=BASE_TEMPERATURE if keep_entropy else None)
    makers = {"unshaped": lambda: [], "antidistillation": lambda: [shaper],
              "anchor": lambda: [AnchorPerturbationProcessor(shaper, task.step_delimiters, threshold=0.02, max_anchors=1)]}
    best = {k: float("inf") for k in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            start = time.perf_counter()
            out = T.generate(task, teacher, pairs, processors=make(), temperature=BASE_TEMPERATURE, seed=0)
            best[name] = min(best[name], 1000 * (time.perf_counter() - start) / max(1, sum(len(c) for c in out)))
    return {**{f"{k}_ms_per_token": round(v, 4) for k, v in best.items()},
            **{f"{k}_vs_unshaped": round(v / best["unshaped"], 2) for k, v in best.items() if k != "unshaped"}}


def heldout_loss(model, batches: list) -> float:
    """Mean next-token loss of ``model`` on ``(ids, labels)`` batches."""
    with torch.no_grad():
        return float(np.mean([float(model(input_ids=ids, labels=labels).loss) for ids, labels in batches]))


def proxy_check(teacher, *, task: T.Task = T.ADDITION, seeds: int = 3, n_traces: int = 300, strength: float = 10.0,
                plausible: float = 0.05, keep_entropy: bool = False, steps: tuple[int, ...] = (1, 10, 50),
                lr: float = 0.005, proxy: dict[str, int] | None = None,
                progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Does the shift do, on the proxy it is computed from, what it is computed to do? Per seed the
    proxy *continues* training from its own weights (plain full-batch gradient descent, ``lr``) on
    the N unshaped, shaped and sign-flipped traces, and its loss on the held-out batches that gave
    the direction is read after each number of ``steps``. To first order, one step on shaped
    traces must raise that loss relative to unshaped ones and one on flipped traces lower it; if
    that holds and a separately trained student still does not learn less, the first-order,
    one-step effect does not carry over to what a student learns."""
    say = progress or (lambda m: None)
    out: list[dict[str, Any]] = []
    for seed in range(seeds):
        pairs = task.problems(n_traces, np.random.default_rng(seed))
        model0, held = train_proxy(teacher, seed, task=task, **(proxy or {}))
        direction = heldout_gradient(model0, held)
        start = heldout_loss(model0, held)
        for name, sign in (("unshaped", 0.0), ("antidistillation", 1.0), ("antidistillation-flipped", -1.0)):
            procs = [] if sign == 0 else [AntidistillationProcessor(
                model0, strength=strength, direction=direction, plausible=plausible,
                keep_entropy_at=BASE_TEMPERATURE if keep_entropy else None)]
            if sign < 0:
                _flipped(procs[0])
            completions = T.generate(task, teacher, pairs, processors=procs, temperature=BASE_TEMPERATURE, seed=seed)
            ids, labels = T.batch_tensors(task, [task.prompt(r) + c for r, c in zip(pairs, completions)])
            model = copy.deepcopy(model0).train()
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            row: dict[str, Any] = {"seed": seed, "mode": name, "start": start}
            for step in range(1, max(steps) + 1):
                loss = model(input_ids=ids, attention_mask=(ids != task.pad).long(), labels=labels).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
                if step in steps:
                    model.eval()
                    row[f"after_{step}"] = heldout_loss(model, held)
                    model.train()
            out.append(row)
            say(f"proxy check seed {seed} {name}: " + ", ".join(f"{k} {v:.5f}" for k, v in row.items()
                                                                  if k not in ("seed", "mode")))
    return out
