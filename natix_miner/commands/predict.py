"""``natix-miner predict IMAGE... [--profile P] [--json]``: test images through the cascade.

    natix-miner predict road.jpg other.png --profile h100x1
    road.jpg  P(roadwork)=0.912  tiers: fast -> detect  (412 ms)
      tier    expert        P      note
      fast    convnextv2    0.934
      fast    dinov2_head   0.881
      detect  owlv2         -      timeout
    natix-miner predict road.jpg --json
    {"path": "road.jpg", "probability": 0.91, "tiers": ["fast"], "experts": {"convnextv2": 0.93, ...}, ...}

Every image gets an answer line (a bad file is a fallback with its reason, as on the wire); the
exit status is 2 only when a path cannot be read. ``--deadline`` applies the validator's time limit.

Debugging every tier, before any weights are here (stand-ins: ``natix_miner/standins``)::

    natix-miner models stand-in h100x2 --scale tiny --out stand-ins
    natix-miner predict bus.jpg --profile h100x2 --stand-ins stand-ins --all-tiers --device cpu

``--all-tiers`` runs every tier whatever the confidence, each tier waiting for all its experts within
the deadline; ``--json`` then carries ``per_tier``: ``{tier: {expert: P or why it has none}}``.
"""

import asyncio
import json
import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="run images through the cascade: a table per image, or JSON")
    p.add_argument("images", nargs="+", help="image files (any format)")
    p.add_argument("--profile", default=None, help="profile name or path (default: demo-cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of tables")
    p.add_argument("--deadline", type=float, default=None, help="seconds per image (default: the profile's)")
    p.add_argument("--all-tiers", action="store_true",
                   help="run every tier whatever the confidence and show every expert's answer (debugging; "
                        "a tier waits for all its experts within the deadline)")
    add_load_flags(p)
    from natix_miner.standins import add_arguments

    add_arguments(p)
    p.set_defaults(func=main)


def add_load_flags(p) -> None:
    """``--allow-downloads`` and ``--allow-degraded`` (predict, evaluate, bench, soak, mock-validator)."""
    p.add_argument("--allow-downloads", action="store_true",
                   help="let missing models download from their hub (default: offline, a missing model "
                        "fails at once with its fix; NATIX_ALLOW_DOWNLOADS=1 too)")
    p.add_argument("--allow-degraded", action="store_true",
                   help="answer even when a tier has no loadable expert (default: exit 2 with the list)")


DEMO_CAVEAT = "demo model: a stand-in trained on procedural scenes, not a roadwork model"


def record(path: str, res) -> dict:
    """The ``--json`` object: ``path``, ``probability``, ``tiers``, ``experts`` (name -> P) and the
    rest of the result (evidence details, skipped experts, timings, fallback)."""
    d = res.to_dict()
    return {"path": path, "probability": res.probability, "tiers": list(res.tiers_run),
            "experts": {name: ev.probability for name, ev in res.evidence.items()}, **d}


def per_tier(res, profile) -> dict:
    """``{tier: {expert: P, or the reason it has none ("timeout", "failed", ...)}}`` in profile order."""
    return {t.name: {n: (res.evidence[n].probability if n in res.evidence else res.skipped.get(n, "not_run"))
                     for n in t.experts} for t in profile.tiers}


def table(path: str, res, profile) -> str:
    total_ms = res.timings.get("total", 0.0) * 1000
    notes = []
    if res.cached:
        notes.append("cached")
    if res.fallback:
        notes.append(f"fallback: {res.fallback_reason}")
    head = (f"{path}  P(roadwork)={res.probability:.3f}  tiers: {' -> '.join(res.tiers_run) or '-'}  "
            f"({total_ms:.0f} ms){'  [' + ', '.join(notes) + ']' if notes else ''}")
    rows = [("tier", "expert", "P", "note")]
    for tier in profile.tiers:
        for name in tier.experts:
            ev = res.evidence.get(name)
            if ev is not None:
                ms = res.timings.get(f"expert:{name}")
                note = "abstained" if ev.abstain else (f"{ms * 1000:.0f} ms" if ms is not None else "")
                rows.append((tier.name, name, f"{ev.probability:.3f}", note))
            elif name in res.skipped:
                rows.append((tier.name, name, "-", res.skipped[name]))
        if tier.name in res.skipped:
            rows.append((tier.name, "", "-", res.skipped[tier.name]))
    if len(rows) == 1:
        return head
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([head] + lines)


async def _run(args) -> int:
    from natix_miner.engine import Engine
    from natix_miner.preflight import check_degraded, degraded_message

    engine = Engine.from_profile(args.profile)
    await engine.start()
    try:
        degraded = check_degraded(engine, allow=True)
        if degraded:
            print(degraded_message(degraded, args.allow_degraded), file=sys.stderr)
            if not args.allow_degraded:
                return 2
        for path in args.images:
            with open(path, "rb") as f:
                data = f.read()
            deadline = None if args.deadline is None else time.monotonic() + args.deadline
            res = await engine.predict(data, deadline, all_tiers=args.all_tiers)
            if args.json:
                rec = record(path, res)
                rec["per_tier"] = per_tier(res, engine.profile)
                if engine.profile.demo:  # a stand-in model: never mistake its numbers for a real miner's
                    rec["caveat"] = DEMO_CAVEAT
                print(json.dumps(rec, default=str), flush=True)
            else:
                print(table(path, res, engine.profile) + (f"\n  ({DEMO_CAVEAT})" if engine.profile.demo else ""),
                      flush=True)
    finally:
        await engine.close()
    return 0


def main(args) -> int:
    from natix_miner.config import LoggingConfig, ProfileError
    from natix_miner.ops.logs import setup_logging

    setup_logging(LoggingConfig(level="WARNING"))
    from natix_miner.offline import apply_download_policy

    apply_download_policy(args.allow_downloads)
    from natix_miner.standins import apply_cli

    if apply_cli(args):  # --stand-ins / --device: applied where the profile loads
        return 2
    for p in args.images:
        try:
            open(p, "rb").close()
        except OSError as exc:
            print(f"error: cannot read {p}: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(_run(args))
    except ProfileError as exc:
        print(f"invalid profile:\n{exc}", file=sys.stderr)
        return 1
