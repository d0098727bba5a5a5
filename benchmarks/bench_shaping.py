"""Output shaping on the arithmetic lab: teacher utility vs what a student distilled from its traces learns.

Trains a tiny teacher on a scratchpad task (``--task addition``: 2-digit addition, the only free
choice the order of two digits in a column; ``--task multisum``: five operands summed in any order,
120 valid traces per problem), then per seed a proxy student and,
for every condition (unshaped at the serving temperature, hotter temperature sampling,
antidistillation at several strengths, anchor-step perturbation, reasoning summaries), N
teacher traces and a student of another architecture trained on them. Prints per condition the
teacher's accuracy on the traces it wrote, the student's accuracy on unseen problems (and as a
share of the unshaped student's), the generation cost per token relative to unshaped sampling,
and the cross-validated AUC of a logistic regression telling shaped answers from unshaped ones.

    nice -n 10 timeout 1800 .venv/bin/python benchmarks/bench_shaping.py --seeds 3 --traces 300
    nice -n 10 timeout 3600 .venv/bin/python benchmarks/bench_shaping.py --task multisum --seeds 3 --traces 300 \
        --student-steps 1000 --teacher-dir /tmp/shaping-multisum --keep-entropy --plausible 0.2 \
        --modes temperature,antidistillation,antidistillation-flipped --strengths 0,1,10 --temperatures 0.85
    nice -n 10 timeout 600 .venv/bin/python benchmarks/bench_shaping.py --cost --teacher-dir /tmp/shaping-teacher
    nice -n 10 timeout 3000 .venv/bin/python benchmarks/bench_shaping.py --task multisum --seeds 3 --traces 300 \
        --student-steps 1000 --teacher-dir /tmp/shaping-multisum --modes decoupled --anchor-counts 1,2,5 \
        --anchor-temperature 1.5
    nice -n 10 timeout 600 .venv/bin/python benchmarks/bench_shaping.py --cost --task multisum \
        --teacher-dir /tmp/shaping-multisum --anchor-counts 1,2,5 --anchor-temperature 1.5
    nice -n 10 timeout 1800 .venv/bin/python benchmarks/bench_shaping.py --composition --seeds 2 --traces 300
    nice -n 10 timeout 1800 .venv/bin/python benchmarks/bench_shaping.py --radioactivity --seeds 3 \
        --strengths 0,0.3,1,2 --natural-dir /tmp/shaping-natural2 --natural-steps 259

    nice -n 10 timeout 900 .venv/bin/python benchmarks/bench_shaping.py --natural-cost \
        --natural-dir /tmp/shaping-natural2 --natural-steps 259

``--radioactivity`` is the natural-text composition: per seed and antidistillation strength (0 =
unshaped), a student of shaped, watermarked answers of the lab's tiny natural-text model, read by
the open-weights radioactivity test (distillguard/shaping/natural.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--traces", type=int, default=300, help="teacher traces per student")
    parser.add_argument("--student-steps", type=int, default=300)
    parser.add_argument("--teacher-steps", type=int, help="when the teacher is trained (default: 800 for addition, "
                        "1500 for multisum)")
    parser.add_argument("--strengths", default="0.05,0.3,1.0",
                        help="antidistillation λ: the first without the plausibility guard, the rest with it")
    parser.add_argument("--anchor-strengths", default="1.0")
    parser.add_argument("--plausible", type=float, default=0.05,
                        help="the guard: only tokens with at least this share of the top token's probability may be raised")
    parser.add_argument("--temperatures", default="1.0,1.3")
    parser.add_argument("--modes", help="only these conditions (comma-separated; unshaped always runs)")
    parser.add_argument("--teacher-dir", help="load the lab teacher from here (trained and saved there if absent)")
    parser.add_argument("--task", default="addition", choices=("addition", "multisum"),
                        help="the lab task: 2-digit addition (one free choice per column) or five operands "
                             "summed in any order (120 valid traces per problem)")
    parser.add_argument("--keep-entropy", action="store_true",
                        help="rescale every shift so that sampling keeps the serving temperature's entropy")
    parser.add_argument("--test-problems", type=int, default=300, help="unseen problems a student is scored on")
    parser.add_argument("--proxy-steps", type=int, default=150, help="training steps of the proxy student")
    parser.add_argument("--proxy-traces", type=int, default=64, help="teacher traces the proxy trains on")
    parser.add_argument("--proxy-layers", type=int, default=1, help="the proxy's layers (32 dims)")
    parser.add_argument("--select-k", type=int, default=4,
                        help="modes select / select-flipped: teacher samples per answer, the one that would raise "
                             "(lower) the proxy's held-out loss most over its whole completion is returned")
    parser.add_argument("--anchor-counts", default="",
                        help="mode decoupled: anchor steps perturbed per answer (comma-separated strengths); the "
                             "answer comes from the unshaped pass, the reasoning is regenerated from the first anchor")
    parser.add_argument("--anchor-temperature", type=float, default=2.0,
                        help="mode decoupled: the temperature anchor steps are sampled at")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from here (design on other seeds "
                        "than the ones reported)")
    parser.add_argument("--composition", action="store_true",
                        help="instead: shaped + watermarked answers, text detection and radioactivity of a student")
    parser.add_argument("--cost", action="store_true", help="instead: generation cost per token (best of 5)")
    parser.add_argument("--proxy-lr", type=float, default=0.005, help="--proxy-check: gradient-descent step size")
    parser.add_argument("--proxy-check", action="store_true",
                        help="instead: the proxy's own held-out loss after training on unshaped, shaped and "
                             "sign-flipped traces (the shift's first-order premise; the last --strengths value)")
    parser.add_argument("--radioactivity", action="store_true",
                        help="instead: radioactivity of students of shaped, watermarked natural-text answers")
    parser.add_argument("--natural-cost", action="store_true",
                        help="instead: generation cost per token on the natural-text teacher (batched, best of 3)")
    parser.add_argument("--natural-dir", default="/tmp/shaping-natural",
                        help="--radioactivity: work directory (the natural-text teacher is built there once)")
    parser.add_argument("--natural-steps", type=int, default=22,
                        help="--radioactivity: training steps of the natural-text teacher when it is built")
    parser.add_argument("--total-tokens", type=int, default=8000, help="--radioactivity: student training tokens")
    parser.add_argument("--mode", default="antidistillation", help="--radioactivity: antidistillation or anchor")
    parser.add_argument("--json", help="also write the summary as JSON here")
    args = parser.parse_args()

    import torch

    from distillguard.shaping import lab
    from distillguard.shaping import task as lab_task

    torch.set_num_threads(1)
    start = time.monotonic()
    say = lambda m: print(m, file=sys.stderr, flush=True)   # noqa: E731
    if args.cost:
        task = lab_task.get(args.task)
        teacher, _ = lab.teacher_from(args.teacher_dir, args.teacher_steps or task.teacher_steps, task)
        if args.anchor_counts:        # decoupled reasoning, one request at a time as the model server answers
            from distillguard.shaping import lab_decoupled

            for a in (int(x) for x in args.anchor_counts.split(",") if x):
                print(json.dumps({"anchors": a, "anchor_temperature": args.anchor_temperature,
                                  **lab_decoupled.serving_cost(task, teacher, anchors=a,
                                                               temperature=args.anchor_temperature)}))
            return
        print(json.dumps(lab.generation_cost(teacher, task=task, plausible=args.plausible,
                                             keep_entropy=args.keep_entropy)))
        return
    if args.proxy_check:
        task = lab_task.get(args.task)
        teacher, _ = lab.teacher_from(args.teacher_dir, args.teacher_steps or task.teacher_steps, task)
        strength = [float(x) for x in args.strengths.split(",") if x][-1]
        rows = lab.proxy_check(teacher, task=task, seeds=args.seeds, n_traces=args.traces, strength=strength,
                               plausible=args.plausible, keep_entropy=args.keep_entropy, lr=args.proxy_lr,
                               proxy={"steps": args.proxy_steps, "traces": args.proxy_traces,
                                      "layers": args.proxy_layers},
                               progress=say)
        steps = [k for k in rows[0] if k.startswith("after_")]
        print(f"task {task.name}, λ {strength:g}, plausible {args.plausible:g}, step size {args.proxy_lr:g}; proxy held-out loss minus the "
              f"loss after the same steps on unshaped traces (start: before any step)")
        print(f"{'seed':>4}  {'mode':<25}{'start':>8}" + "".join(f"{k.replace('after_', 'Δ step '):>14}" for k in steps))
        base = {r["seed"]: r for r in rows if r["mode"] == "unshaped"}
        for r in rows:
            print(f"{r['seed']:>4}  {r['mode']:<25}{r['start']:>8.4f}"
                  + "".join(f"{r[k] - base[r['seed']][k]:>+14.2e}" for k in steps))
        print(f"{time.monotonic() - start:.0f} s")
        return
    if args.radioactivity or args.natural_cost:
        from pathlib import Path

        from distillguard.lab.tinylm import build_model
        from distillguard.shaping import natural

        teacher_dir = Path(args.natural_dir) / "teacher"
        if not (teacher_dir / "config.json").exists():      # the radioactivity tests' teacher: fixed steps
            build_model(teacher_dir, seconds=3600, steps=args.natural_steps, vocab_size=512,
                        max_chars=150_000 if args.natural_steps <= 22 else 400_000)
        if args.natural_cost:
            print(json.dumps(natural.generation_cost(teacher_dir)))
            return
        conditions = tuple((None if s == 0 else args.mode, s) for s in
                           (float(x) for x in args.strengths.split(",") if x))
        rows = natural.radioactivity_curve(teacher_dir, Path(args.natural_dir) / "students", seeds=args.seeds,
                                           conditions=conditions, total_tokens=args.total_tokens, progress=say)
        print(f"{'mode':<17}{'λ':>5}{'seed':>5}  {'right':>5}  {'p (radioactivity)':>17}  {'text p':>9}  "
              f"{'teacher loss':>12}  {'AUC':>5}")
        for r in rows:
            auc = f"{r['detect_auc']:.2f}" if "detect_auc" in r else "-"
            print(f"{r['mode'] or 'unshaped':<17}{r['strength'] or 0:>5g}{r['seed']:>5}  {str(r['right_cohort']):>5}  "
                  f"{r['p_corrected']:>17.3g}  {r['text_p']:>9.3g}  {r['teacher_loss_on_answers']:>12.4f}  {auc:>5}")
        print(f"{time.monotonic() - start:.0f} s")
        return
    if args.composition:
        task = lab_task.get(args.task)
        teacher, _ = lab.teacher_from(args.teacher_dir, args.teacher_steps or task.teacher_steps, task)
        for seed in range(args.seeds):
            print(json.dumps({"seed": seed, **lab.composition(teacher, task=task, seed=seed, n_traces=2 * args.traces,
                                                                student_steps=args.student_steps, progress=say)}))
        return
    task = lab_task.get(args.task)
    floats = lambda text: tuple(float(x) for x in text.split(",") if x)   # noqa: E731
    result = lab.run(seeds=args.seeds, n_traces=args.traces, student_steps=args.student_steps,
                     teacher_steps=args.teacher_steps or task.teacher_steps, strengths=floats(args.strengths),
                     anchor_strengths=floats(args.anchor_strengths), temperatures=floats(args.temperatures),
                     modes=tuple(args.modes.split(",")) if args.modes else None, teacher_dir=args.teacher_dir,
                     plausible=args.plausible, task=task, keep_entropy=args.keep_entropy,
                     test_problems=args.test_problems, select_k=args.select_k, proxy_steps=args.proxy_steps,
                     proxy_traces=args.proxy_traces, proxy_layers=args.proxy_layers,
                     anchor_counts=tuple(int(x) for x in args.anchor_counts.split(",") if x),
                     anchor_temperature=args.anchor_temperature, first_seed=args.first_seed, progress=say)
    summary = lab.summarize(result)
    print(f"teacher: {result['teacher']}")
    print(f"task {task.name}, {args.seeds} seeds, {args.traces} traces per student, {args.student_steps} student "
          f"steps, unshaped = sampling at T={lab.BASE_TEMPERATURE}"
          f"{', shifts keep its entropy' if args.keep_entropy else ''}; {time.monotonic() - start:.0f} s")
    print(lab.format_table(summary))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"teacher": result["teacher"], "summary": summary}, fh, indent=2)


if __name__ == "__main__":
    main()
