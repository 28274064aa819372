"""``natix-miner bench``: measured speed (see natix_miner/benchmark.py and docs/benchmarks.md).

    natix-miner bench --arch efficientnet_b0 --dtype bfloat16 --compile --sections ceiling,bulk --n 40000
    natix-miner bench --profile demo-cpu --sections online,axon --concurrency 1,10,64
"""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure throughput and latency")
    p.add_argument("--profile", default=None, help="profile to measure (default: a one-expert --arch profile)")
    p.add_argument("--arch", default="efficientnet_b0", help="timm architecture for the one-expert profile")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (GPU)")
    p.add_argument("--compile-mode", default="max-autotune-no-cudagraphs",
                   help="torch.compile mode; reduce-overhead uses CUDA graphs")
    p.add_argument("--decode", default="gpu", choices=["cpu", "gpu", "hw"],
                   help="bulk-path JPEG decoding: hw = the card's JPEG engines (nvImageCodec), gpu = nvJPEG CUDA")
    p.add_argument("--hw-share", type=float, default=1.0, help="with --decode hw: share sent to the JPEG engines")
    p.add_argument("--cuda-graphs", action="store_true", help="replay one CUDA graph per batch bucket (GPU)")
    p.add_argument("--max-wait-ms", type=float, default=0.0,
                   help="online micro-batching: how long a lone request waits for company")
    p.add_argument("--decode-threads", type=int, default=8, help="CPU decoding threads per replica")
    p.add_argument("--devices", default=None, help="comma list, default: every GPU (else cpu)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--workers", type=int, default=1, help="replica processes per device (bulk section)")
    p.add_argument("--n", type=int, default=20000, help="images for the bulk section")
    p.add_argument("--requests", type=int, default=200, help="requests per online/axon setting")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 64])
    p.add_argument("--sections", default="ceiling,bulk,online,axon")
    p.add_argument("--cache-off", action="store_true", default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--allow-downloads", action="store_true",
                   help="let missing models download (default: offline; NATIX_ALLOW_DOWNLOADS=1 too)")
    from natix_miner.standins import add_arguments

    add_arguments(p)  # --stand-ins DIR, --device D (applied where the profile loads)
    p.set_defaults(func=main)


def main(args) -> int:
    from natix_miner.benchmark import run
    from natix_miner.offline import apply_download_policy

    apply_download_policy(args.allow_downloads)
    from natix_miner.standins import apply_cli

    if apply_cli(args):
        return 2
    run(args)
    return 0
