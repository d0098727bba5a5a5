"""Leave-one-family-out detection (issue 14, item 5): `eval_detection.py --leave-one-family-out`.

For each seed, one lab run holds every family: the evasive extraction families and the hard
legitimate families of `lab traffic`, the older strategies and hard negatives, and organic users.
Its events are split by family into one file each (one streaming pass) and ingested once into the
store that is scanned. A second, organic-only lab run (``--reference-accounts`` users, another
seed) is the organic population every baseline is fitted on (calibrating a false-positive rate of
0.001 needs on the order of a thousand organic accounts; the organic users of the first run are
never fitted on and give the organic false-positive rate). Then, for each family F:

* by default the baseline is fitted on the organic reference alone (`distillguard ingest` of the
  reference run, then `distillguard baseline build STORE --labels ...` through the public CLI):
  it excludes every family at once, so one build and one scan of the first run
  (`distillguard scan STORE --baseline B --format json`) score every family, none of which any
  fitted threshold or weight has seen;
* with ``--fit-other-families``, the baseline for family F is fitted on the reference plus every
  other family's traffic (legitimate families count as organic through their labels; attack
  families are scored with the baseline built without *any* attack family, which a detector that
  fits on labelled attacks could use), so F alone is left out. Each legitimate family then costs
  one build and one scan. Note that legitimate high-volume families in the organic fit move the
  calibration of the combined p-value: this mode measures what an operator who fits on such
  customers gets.

Reported per family: attack families, the flag rate among accounts with >= 200 queries and over
all accounts; swarms (``swarm``, ``hydra``), campaigns caught at cluster level (every member
flagged) and member flag rate, and for campaigns sharing only a public library how many pairs of
distinct campaigns were merged into one cluster; legitimate families, the false-positive rate
(status ``flagged``) with its one-sided 95 % Clopper-Pearson upper bound, and the status mix
(``probing``, ``evaluation``, ...). Whatever rule `scan` applies at this commit is what is measured.
"""

from __future__ import annotations

import collections
import gzip
import itertools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from distillguard.lab.evasive import ATTACK_FAMILIES
from distillguard.lab.legit import LEGIT_FAMILIES
from distillguard.lab.traffic import TrafficConfig, generate

SWARMS = ("swarm", "hydra")
HELDOUT = "organic_heldout"
NO_ATTACKS = "<every attack family>"
ALL_FAMILIES = "<every family: organic reference only>"


def fpr_upper_bound(flagged: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen as flagged/n (0/n gives ~3/n)."""
    from scipy.stats import beta
    return 1.0 if flagged >= n else float(beta.ppf(confidence, flagged + 1, n - flagged))


def cli(*args: Any) -> str:
    """Run the public command line; a failure stops the benchmark with its message."""
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "distillguard", *map(str, args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"distillguard {' '.join(map(str, args[:2]))} failed ({proc.returncode}): "
                         f"{proc.stderr.strip()[-800:]}")
    return proc.stdout


def family_of(label: dict[str, Any]) -> str:
    family = label.get("family") or label.get("strategy") or "organic"
    return HELDOUT if family == "organic" else family  # the scanned run's organic users: never fitted on


def split_by_family(events_path: Path, labels: dict[str, dict], out: Path) -> dict[str, Path]:
    """One gzip JSON Lines file per family, in one streaming pass (memory bounded by the open files)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    try:
        with gzip.open(events_path, "rb") as fh:
            for line in fh:
                account = orjson.loads(line)["account"]
                family = family_of(labels[account])
                if family not in files:
                    paths[family] = out / f"{family}.jsonl.gz"
                    files[family] = gzip.open(paths[family], "wb", compresslevel=1)
                files[family].write(line)
    finally:
        for f in files.values():
            f.close()
    return paths


def reference(args: Any, seed: int, work: Path) -> tuple[Path, list[bytes]]:
    """The organic population every baseline is fitted on: an organic-only lab run, ingested once."""
    ref = work / f"reference-{seed}"
    store = ref / "reference.duckdb"
    if not store.exists():
        config = TrafficConfig(seed=900_000 + seed, accounts=args.reference_accounts, days=args.days, campaigns=(),
                               batch_apps=0, eval_runs=0, researchers=0, power_users=0)
        summary = generate(config, ref)
        cli("ingest", summary.events_path, "--db", ref / "partial.duckdb")
        (ref / "partial.duckdb").rename(store)
    return store, (ref / "labels.jsonl").read_bytes().splitlines()


def build_and_scan(work: Path, name: str, files: dict[str, Path], labels: dict[str, dict], leave_out: set[str],
                   ref: tuple[Path, list[bytes]], store: Path, fpr: float) -> dict[str, dict]:
    """Baseline on the reference plus every family not in ``leave_out`` (never the scanned run's
    organic users), then a scan of the whole first run with it; the scan's row of each account."""
    keep = [f for f in files if f not in leave_out and f != HELDOUT]
    labels_path = work / f"labels-{name}.jsonl"
    with open(labels_path, "wb") as fh:
        fh.write(b"".join(line + b"\n" for line in ref[1]))
        for row in labels.values():
            if family_of(row) in keep:
                fh.write(orjson.dumps(row) + b"\n")
    fit_store = work / f"fit-{name}.duckdb"
    shutil.copyfile(ref[0], fit_store)
    if keep:
        cli("ingest", *[files[f] for f in keep], "--db", fit_store)
    baseline = work / f"baseline-{name}.json"
    cli("baseline", "build", fit_store, "--labels", labels_path, "--out", baseline)
    fit_store.unlink()  # bounded disk: one fitting store at a time
    result_path = work / f"scan-{name}.json"
    cli("scan", store, "--baseline", baseline, "--fpr", fpr, "--format", "json", "--out", result_path)
    data = orjson.loads(result_path.read_bytes())
    result_path.unlink()
    rows = {a["account"]: a for a in data["accounts"]}
    flagged_clusters = {c["cluster"] for c in data.get("clusters", []) if c.get("flagged")}
    for a in rows.values():
        a["in_flagged_cluster"] = a.get("cluster") in flagged_clusters
    return rows


def run_seed(seed: int, args: Any, work: Path) -> list[dict[str, Any]]:
    lab = work / f"lab-{seed}"
    n = args.accounts_per_kind
    older = n if args.lab_strategies else 0
    config = TrafficConfig(seed=seed, accounts=args.organic, days=args.days, families=ATTACK_FAMILIES,
                           family_instances=n, legit_families=tuple(LEGIT_FAMILIES), legit_accounts=n,
                           power_users=max(1, n), batch_apps=older, eval_runs=older, researchers=older,
                           batch_per_day=300, **({} if args.lab_strategies else {"campaigns": ()}))
    t0 = time.perf_counter()
    summary = generate(config, lab)
    labels = {r["account"]: r for r in map(orjson.loads, summary.labels_path.read_bytes().splitlines())}
    files = split_by_family(summary.events_path, labels, lab / "by-family")
    store = lab / "all.duckdb"
    cli("ingest", summary.events_path, "--db", store)
    ref = reference(args, seed, work)
    print(f"seed {seed}: {summary.events:,} events, {summary.accounts:,} accounts, {len(files)} families; "
          f"reference: {len(ref[1]):,} organic accounts ({time.perf_counter() - t0:.0f} s to generate, split "
          f"and ingest)", flush=True)
    attack = {f for f in files if any(family_of(r) == f and r["kind"] == "extraction" for r in labels.values())}
    if not args.fit_other_families:
        # One baseline on the organic reference alone: it excludes every family, so one scan
        # scores them all without any of them having been fitted on.
        everything = set(files) - {HELDOUT}
        plans: list[tuple[str, set[str], list[str]]] = [(ALL_FAMILIES, everything, sorted(files))]
    else:
        plans = [(NO_ATTACKS, attack, sorted(attack) + [HELDOUT])]
        for family in sorted(set(files) - attack - {HELDOUT}):
            plans.append((family, {family}, [family]))
    if args.families:
        wanted = set(args.families.split(",")) | {HELDOUT}
        plans = [(name, out, [f for f in scored if f in wanted]) for name, out, scored in plans
                 if set(scored) & wanted]
    rows: list[dict[str, Any]] = []
    for i, (name, leave_out, scored) in enumerate(plans):
        t = time.perf_counter()
        result = build_and_scan(lab, f"{i}", files, labels, leave_out, ref, store, args.fpr)
        for account, label in labels.items():
            family = family_of(label)
            if family in scored and account in result:
                r = result[account]
                rows.append({**label, "family": family, "seed": seed, "queries": r["queries"], "flagged": r["flagged"],
                             "status": r.get("status"), "cluster": r.get("cluster"),
                             "in_flagged_cluster": r["in_flagged_cluster"]})
        print(f"  left out {name}: baseline + scan in {time.perf_counter() - t:.0f} s", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| family | kind | accounts | flagged | result on the family left out | status mix |",
           "|---|---|---:|---:|---|---|"]
    order = sorted({r["family"] for r in rows}, key=lambda f: (f not in ATTACK_FAMILIES and f not in SWARMS,
                                                                f in (HELDOUT,), f))
    for family in order:
        group = [r for r in rows if r["family"] == family]
        kind = group[0]["kind"]
        flagged = sum(r["flagged"] for r in group)
        statuses = collections.Counter(r["status"] for r in group)
        mix = ", ".join(f"{s} {k}" for s, k in statuses.most_common())
        if kind == "organic":
            metric = f"FPR {flagged / len(group):.4f} (95% upper bound {fpr_upper_bound(flagged, len(group)):.4f})"
        else:
            big = [r for r in group if r["queries"] >= 200]
            metric = (f"recall {sum(r['flagged'] for r in big)}/{len(big)} at ≥ 200 queries, "
                      f"{flagged}/{len(group)} overall")
            campaigns: dict[tuple, list] = collections.defaultdict(list)
            for r in group:
                campaigns[(r["seed"], r["campaign"])].append(r)
            if family in SWARMS:
                caught = sum(all(r["flagged"] for r in members) for members in campaigns.values())
                metric = (f"cluster recall {caught}/{len(campaigns)} (every member flagged); "
                          f"members {flagged}/{len(group)}")
            if family == "library":
                merged = 0
                pairs = 0
                for (s1, c1), (s2, c2) in itertools.combinations(campaigns, 2):
                    if s1 != s2 or c1.rsplit("/", 1)[0] != c2.rsplit("/", 1)[0]:
                        continue
                    pairs += 1
                    k1 = {r["cluster"] for r in campaigns[(s1, c1)] if r["cluster"]}
                    k2 = {r["cluster"] for r in campaigns[(s2, c2)] if r["cluster"]}
                    merged += bool(k1 & k2)
                metric += f"; campaign pairs merged into one cluster {merged}/{pairs}"
        out.append(f"| {family} | {kind} | {len(group)} | {flagged} | {metric} | {mix} |")
    return "\n".join(out)


def main(args: Any) -> None:
    import tempfile

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dg-lofo-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        rows += run_seed(seed, args, work)
    print(f"\nleave-one-family-out, seeds {args.seeds}, {args.days} days, {args.accounts_per_kind} per kind, "
          f"{args.organic} organic users scanned, {args.reference_accounts} fitted on "
          f"({time.perf_counter() - t0:.0f} s)\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(rows))
