"""``natix-miner profile show|validate [PROFILE]``: the cascade as data, checked.

    natix-miner profile validate configs/h100x2.yaml   # exit 1 with "key: problem" lines if wrong
    natix-miner profile show demo-cpu                  # tiers, experts, devices, budgets
"""

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="show or validate a profile")
    p.add_argument("action", choices=["show", "validate"])
    p.add_argument("profile", nargs="?", default=None)
    p.set_defaults(func=main)


def main(args) -> int:
    from natix_miner.config import ProfileError, load_profile

    try:
        prof = load_profile(args.profile)
    except ProfileError as exc:
        print(f"invalid profile:\n{exc}", file=sys.stderr)
        return 1
    if args.action == "validate":
        print(f"ok: {prof.path} ({len(prof.experts)} experts, {len(prof.tiers)} tiers)")
        return 0
    print(f"profile {prof.name}: {prof.description}")
    print(f"deadline {prof.deadline_s}s, escalate while {prof.escalation.low} < p < {prof.escalation.high}")
    for tier in prof.tiers:
        print(f"  tier {tier.name} (budget {tier.budget_s}s)")
        for name in tier.experts:
            e = prof.expert(name)
            w = prof.consensus.weights.get(name, 1.0)
            print(f"    {name:<24} {e.family:<14} {e.device:<8} {e.dtype:<9} batch<={e.max_batch:<5} weight {w:+.3f}")
    print(f"  consensus bias {prof.consensus.bias:+.3f} normalize={prof.consensus.normalize}")
    return 0
