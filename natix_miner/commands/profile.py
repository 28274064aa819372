"""``natix-miner profile show|validate|plan [PROFILE]``: the cascade as data, checked.

    natix-miner profile validate configs/h100x2.yaml   # exit 1 with "file: key: problem" lines if wrong
    natix-miner profile validate h100x1 --check-models # also: every model not on this machine, with its fix
    natix-miner profile validate h100x1 --check-models --stand-ins DIR --device cpu   # as it would run
    natix-miner profile show demo-cpu                  # tiers, experts, devices, budgets, weights
    natix-miner profile plan h100x2 --gpus 2 --gpu-gb 80   # dry-run placement; exit 1 if a card is over budget

``validate`` checks the schema, the references between keys, the fitted consensus file beside the
profile, that every expert family is known (else the nearest name), that each expert's options are
its family's typed ``Options`` (an unknown key names the nearest valid one; a bad value names the key
and what it should be) and that its ``dtype`` is one the family runs. Experts are constructed, never
loaded: no weights, and no model library is imported (``natix-miner experts options FAMILY`` prints
a family's schema). ``--check-models`` adds the models (offline, nothing loads;
``natix_miner/preflight.py``): one line per missing model naming the fix, exit 1.

    invalid profile:
    bad.yaml: experts.0(effnet_lite0).options.decode: Input should be 'gpu', 'cpu' or 'hw' (got 'bogus')
    bad.yaml: experts.0(effnet_lite0).options.nonsense_key: 'nonsense_key' is not an option of family 'timm'. Valid: ...
"""

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="show, validate or dry-run place a profile")
    p.add_argument("action", choices=["show", "validate", "plan"])
    p.add_argument("profile", nargs="?", default=None)
    p.add_argument("--gpus", type=int, default=None, help="plan: number of GPUs (default: the visible ones)")
    p.add_argument("--gpu-gb", type=float, default=80.0, help="plan: memory per GPU in GB (with --gpus)")
    p.add_argument("--check-models", action="store_true",
                   help="validate: also report every model that is not present here (offline, nothing loads)")
    from natix_miner.standins import add_arguments

    add_arguments(p)  # --stand-ins DIR / --device D: check (or plan) the profile as it would run
    p.set_defaults(func=main)


def main(args) -> int:
    from natix_miner.config import ProfileError, load_profile
    from natix_miner.standins import apply_cli

    if apply_cli(args):
        return 2
    try:
        prof = load_profile(args.profile)
    except ProfileError as exc:
        print(f"invalid profile:\n{exc}", file=sys.stderr)
        return 1
    from natix_miner.engine.engine import check_profile

    problems = check_profile(prof)
    if problems:
        print("invalid profile:\n" + "\n".join(problems), file=sys.stderr)
        return 1
    if args.action == "validate":
        fitted = prof.consensus_file
        extra = f", fitted consensus {fitted.name}" if fitted is not None and fitted.exists() else ""
        if args.check_models:
            from natix_miner.offline import enforce_offline
            from natix_miner.preflight import missing_models

            enforce_offline(force=True)  # a check, never a download
            missing = missing_models(prof)
            if missing:
                print("\n".join(f"missing: {m.line()}" for m in missing), file=sys.stderr)
                names = sorted({m.expert for m in missing})
                print(f"error: {prof.path}: {len(missing)} missing model(s); {len(names)} of "
                      f"{len(prof.tiered_experts)} experts cannot load here", file=sys.stderr)
                return 1
            extra += ", every model present"
        print(f"ok: {prof.path} ({len(prof.experts)} experts, {len(prof.tiers)} tiers{extra})")
        return 0
    if args.action == "plan":
        from natix_miner.engine.placement import GiB, Placement, PlacementError

        inventory = None
        if args.gpus is not None:
            inventory = {f"cuda:{i}": int(args.gpu_gb * GiB) for i in range(args.gpus)}
        plan = Placement(prof.gpu_memory_fraction, inventory=inventory)
        try:
            plan.plan(prof.tiered_experts)
        except PlacementError as exc:
            print(plan.table())
            print(f"does not fit: {exc}", file=sys.stderr)
            return 1
        print(plan.table())
        over = plan.over_budget()
        for dev, (used, budget, total) in over.items():
            print(f"over budget: {dev} holds {used / GiB:.1f} GiB of hints, its budget is {budget / GiB:.1f} GiB "
                  f"({100.0 * used / total:.1f}% of the card, budget {100.0 * budget / total:.0f}%)", file=sys.stderr)
        return 1 if over else 0
    print(f"profile {prof.name}: {prof.description}".rstrip(": "))
    print(f"deadline {prof.deadline_s}s, escalate while {prof.escalation.low} < p < {prof.escalation.high}, "
          f"fallback {prof.fallback_probability}")
    for tier in prof.tiers:
        band = f", band {tier.escalation.low}-{tier.escalation.high}" if tier.escalation else ""
        print(f"  tier {tier.name} (budget {tier.budget_s}s{band})")
        for name in tier.experts:
            e = prof.expert(name)
            w = prof.consensus.weights.get(name, 1.0)
            devs = ",".join(e.replica_devices)
            print(f"    {name:<24} {e.family:<14} {devs:<16} {e.dtype:<9} batch<={e.max_batch:<5} weight {w:+.3f}")
    print(f"  consensus bias {prof.consensus.bias:+.3f} normalize={prof.consensus.normalize}"
          f"{' stages=' + ','.join(prof.consensus.stages) if prof.consensus.stages else ''}")
    return 0
