"""The mock validator's report: per miner totals, slices by augmentation level and by real /
synthetic, a printed table, JSON and a plot.

Usage::

    rep = build_report(outcomes, targets, config={"seed": 0})
    print(format_scoreboard(rep))
    write_json(rep, "out.json"); write_plot(outcomes, targets, "out.png")

JSON: the top-level ``n``, ``answered``, ``timeouts``, ``invalid``, ``mcc``, ``accuracy``,
``reward_mean``, ``ema`` and ``latency_ms`` (``p50``, ``p95``, ``p99``) describe the first miner;
``miners`` lists every miner with the same keys plus ``fallback``, ``missing``, ``mcc_100``,
``accuracy_10``, ``by_level`` and ``by_source``.
"""

import json
import typing

import numpy as np

from natix_miner.validator.mock import Outcome
from natix_miner.stats import percentile
from natix_miner.validator.reward import ACCURACY_WINDOW, EMA_ALPHA, MCC_WINDOW, REWARD_EXPONENT, binary_mcc

CATEGORIES = ("answered", "fallback", "timeout", "missing", "invalid")


def _pct(values, q) -> typing.Optional[float]:
    p = percentile(values, q)
    return None if p is None else round(p, 1)


def summarise(outs: typing.Sequence[Outcome]) -> dict:
    """Totals for one miner (or one slice of its queries)."""
    counts = {c: sum(1 for o in outs if o.category == c) for c in CATEGORIES}
    valid = [o for o in outs if o.category in ("answered", "fallback")]
    y = np.array([o.label for o in valid])
    pred = np.round(np.array([o.prediction for o in valid], dtype=np.float64))
    lat = [o.latency_ms for o in outs]
    return {
        "n": len(outs),
        "answered": counts["answered"] + counts["fallback"],
        "fallback": counts["fallback"],
        "timeouts": counts["timeout"],
        "missing": counts["missing"],
        "invalid": counts["invalid"],
        "accuracy": round(float(np.mean(pred == y)), 4) if len(valid) else 0.0,
        "mcc": round(float(binary_mcc(y, pred)), 4) if len(valid) else 0.0,
        "reward_mean": round(float(np.mean([o.reward for o in outs])), 4) if outs else 0.0,
        "latency_ms": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99),
                       "max": round(float(max(lat)), 1) if lat else None},
    }


def build_report(outcomes: typing.Sequence[Outcome], targets, config: typing.Optional[dict] = None,
                 duration_s: typing.Optional[float] = None) -> dict:
    miners = []
    for t in targets:
        outs = [o for o in outcomes if o.miner == t.name]
        s = summarise(outs)
        last = outs[-1] if outs else None
        s.update({
            "name": t.name, "address": t.address, "hotkey": t.hotkey,
            "ema": round(last.ema, 4) if last else 0.0,
            "mcc_100": round(last.mcc_100, 4) if last else 0.0,
            "accuracy_10": round(last.accuracy_10, 4) if last else 0.0,
            "broken_queries": sum(1 for o in outs if o.broken),
            "by_level": {str(lv): summarise([o for o in outs if o.level == lv]) for lv in range(4)},
            "by_source": {"real": summarise([o for o in outs if not o.synthetic]),
                          "synthetic": summarise([o for o in outs if o.synthetic])},
        })
        miners.append(s)
    first = miners[0] if miners else summarise([])
    top = {k: first.get(k) for k in ("n", "answered", "fallback", "timeouts", "missing", "invalid", "mcc",
                                      "accuracy", "reward_mean", "ema", "latency_ms")}
    return {**top, "miners": miners, "config": dict(config or {}),
            "duration_s": round(duration_s, 1) if duration_s is not None else None,
            "reward_formula": f"(0.5*MCC(last {MCC_WINDOW}) + 0.5*accuracy(last {ACCURACY_WINDOW}))^{REWARD_EXPONENT:g}; "
                              f"0 for no answer or a prediction outside [0,1]; EMA alpha {EMA_ALPHA}"}


def _row(cells, widths) -> str:
    return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _fmt(v, nd=3):
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _table(header, rows) -> typing.List[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = [_row(header, widths), _row(["-" * w for w in widths], widths)]
    return lines + [_row(r, widths) for r in rows]


def format_scoreboard(rep: dict) -> str:
    """The mock validator's scoreboard: one row per miner, then each miner by augmentation level and source."""
    cfg = rep.get("config", {})
    lines = [f"Mock validator: {cfg.get('n', rep['n'])} challenges, source {cfg.get('source', '?')}, seed {cfg.get('seed')}, "
             f"timeout {cfg.get('timeout', 9.0)} s, concurrency {cfg.get('concurrency', 1)}"
             + (f", {rep['duration_s']} s" if rep.get("duration_s") is not None else ""), ""]
    header = ["miner", "answered", "fallback", "timeouts", "missing", "invalid", "MCC", "accuracy",
              "reward", "EMA", "p50 ms", "p95 ms", "p99 ms"]
    rows = []
    for m in rep["miners"]:
        lat = m["latency_ms"]
        rows.append([m["name"], f"{m['answered']}/{m['n']}", m["fallback"], m["timeouts"], m["missing"], m["invalid"],
                     _fmt(m["mcc"]), _fmt(m["accuracy"]), _fmt(m["reward_mean"]), _fmt(m["ema"]),
                     _fmt(lat["p50"], 1), _fmt(lat["p95"], 1), _fmt(lat["p99"], 1)])
    lines += _table(header, rows)
    for m in rep["miners"]:
        lines += ["", f"{m['name']} ({m['address']}, hotkey {m['hotkey'][:10]}...) by slice:"]
        srows = []
        for key, s in [(f"level {k}", v) for k, v in m["by_level"].items()] + list(m["by_source"].items()):
            srows.append([key, s["n"], s["answered"], s["timeouts"] + s["missing"], s["invalid"], _fmt(s["mcc"]),
                          _fmt(s["accuracy"]), _fmt(s["reward_mean"]), _fmt(s["latency_ms"]["p50"], 1)])
        lines += _table(["slice", "n", "answered", "no answer", "invalid", "MCC", "accuracy", "reward", "p50 ms"], srows)
        lines.append(f"final window: MCC(last {MCC_WINDOW}) {m['mcc_100']:.3f}, accuracy(last {ACCURACY_WINDOW}) "
                     f"{m['accuracy_10']:.3f}, EMA score {m['ema']:.3f}"
                     + (f"; {m['broken_queries']} queries had every metric zeroed by NaN / out-of-range answers"
                        if m["broken_queries"] else ""))
    lines += ["", "reward per query = " + rep["reward_formula"],
              "MCC and accuracy columns: all valid answers of the run, rounded like the validator (0.5 -> 0); "
              "fallback = answers equal to a default value (0.49 / 0.5)"]
    return "\n".join(lines)


def write_json(rep: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(rep, f, indent=2)
        f.write("\n")


def write_plot(outcomes: typing.Sequence[Outcome], targets, path: str) -> None:
    """Reward and EMA over the run (left), client-side latency histogram (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    for t in targets:
        outs = [o for o in outcomes if o.miner == t.name]
        if not outs:
            continue
        x = [o.index for o in outs]
        r = np.array([o.reward for o in outs])
        line = ax1.plot(x, [o.ema for o in outs], label=f"{t.name} EMA", linewidth=2)[0]
        c = np.concatenate([[0.0], np.cumsum(r)])
        idx = np.arange(1, len(r) + 1)
        trailing = (c[idx] - c[np.maximum(0, idx - 10)]) / np.minimum(idx, 10)
        ax1.plot(x, trailing, color=line.get_color(), alpha=0.5,
                 linestyle="--", label=f"{t.name} reward (mean of 10)")
        ax2.hist([o.latency_ms for o in outs], bins=40, alpha=0.6, label=t.name)
    ax1.set_xlabel("challenge")
    ax1.set_ylabel("reward")
    ax1.set_ylim(-0.02, 1.02)
    ax1.set_title("reward over time")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("latency (ms, client side)")
    ax2.set_ylabel("queries")
    ax2.set_title("latency")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
