"""Benchmark filespool against the syscall floor and the peers a user would pick (issue 6).

    python benchmarks/run.py [--messages N] [--repeat R] [--json out.json] [--plot out.png]
                             [--sections local,memory,depth,concurrency,s3,batch,s3latency,azure]
                             [--quick]
                             [--s3-messages N] [--s3-drain-messages M] [--s3-claimers 1,4,16]
                             [--localstack-python PATH]

Prints progress on stderr, then the tables and the targets on stdout; writes
JSON (and a PNG plot if matplotlib is importable). Timing on a shared machine
is noisy: contenders run interleaved in one process, each repetition rotates
their order, and ratios are taken within a repetition before the median.

Sections are modules with ``run(config, log) -> dict`` and ``summarize(result)
-> list[str]``, listed in ``SECTIONS``; a section for another backend is one
more module and one more entry there (and, if it has targets, a function in
``TARGETS``). The ``s3`` section starts moto in-process, and LocalStack as a
child when ``FILESPOOL_LOCALSTACK_PYTHON`` (or ``--localstack-python``) names
its interpreter, as ``nox -s bench`` does; without it LocalStack is skipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Place, filesystem_type, places

SECTIONS: dict[str, str] = {
    "local": "local",
    "memory": "memory",
    "depth": "depth",
    "concurrency": "concurrency",
    "s3": "s3",  # requests per message and concurrent claimers on moto and LocalStack
    "batch": "batch",  # durable deliver_many against the per-message durable floor
    "s3latency": "s3_latency",  # batches and claimer processes behind 0 and 20 ms of latency
    "azure": "azure_claimers",  # claimers draining one spool on Azurite
}

ROUND_TRIP_TARGET = 0.90  # on tmpfs, against the floor that makes the same flushes
DEPTH_TARGET = 0.80
DEPTH_MEMORY_SLACK_MIB = 2  # a page of 4,096 names is about half a MiB
S3_REQUEST_TARGET = 4  # deliver + claim + ack per message on S3, plus the amortized LIST
BATCH_TARGET = 2.0  # durable deliver_many on disk, against the per-message durable floor
S3_BATCH_TARGET = 15.0  # batched S3 deliver and claim+ack at 20 ms, against one at a time
S3_CLAIMERS_TARGET = 8.0  # 16 claimer processes at 20 ms, against one
S3_LOST_RACES_TARGET = 0.10  # lost races as a share of claims, 16 claimer processes


@dataclass
class Config:
    messages: int = 20_000
    repeat: int = 3
    disk_messages: int | None = None  # disk, durability off; default messages / 8
    durable_disk_messages: int | None = None  # disk, durability on; default messages / 20
    depths: tuple[int, ...] = (1_000, 100_000)
    depth_claims: int = 1_000
    consumers: tuple[int, ...] = (1, 2, 4, 8)
    s3_messages: int = 1_000  # requests per message: N per configuration
    s3_drain_messages: int = 150  # concurrent claimers: M per run (moto serves ~100 req/s)
    s3_claimers: tuple[int, ...] = (1, 4, 16)
    s3_latency_messages: int = 256  # batches against one at a time: N per round
    s3_latency_claimers: tuple[int, ...] = (1, 4, 16)  # claimer processes
    s3_latency_drain: int = 2_000  # messages drained by 4 and 16 claimer processes
    s3_latency_single: int = 200  # messages drained by one (its rate does not depend on depth)
    localstack_python: str | None = None  # LocalStack's interpreter; None: skip LocalStack
    places: list[Place] = field(default_factory=list)

    def messages_for(self, kind: str, durable: bool) -> int:
        if kind != "disk":
            return self.messages
        if durable:
            return self.durable_disk_messages or max(self.messages // 20, 100)
        return self.disk_messages or max(self.messages // 8, 100)

    def concurrency_messages_for(self, kind: str) -> int:
        return self.messages_for(kind, durable=False)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, Config]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--messages", type=int, help="N messages of 1 KiB (default 20,000; quick 1,000)"
    )
    parser.add_argument(
        "--repeat", type=int, help="repetitions per figure, median reported (default 3)"
    )
    parser.add_argument(
        "--disk-messages", type=int, help="N on disk without fsync (default N/8: the disk is slow)"
    )
    parser.add_argument(
        "--durable-disk-messages", type=int, help="N on disk with fsync (default N/20)"
    )
    parser.add_argument("--depths", help="comma-separated depths of new/ (default 1000,100000)")
    parser.add_argument("--consumers", help="comma-separated consumer counts (default 1,2,4,8)")
    parser.add_argument(
        "--s3-messages", type=int, help="S3 requests per message: N (default 1,000; quick 20)"
    )
    parser.add_argument(
        "--s3-drain-messages", type=int, help="S3 concurrent claimers: M (default 150; quick 32)"
    )
    parser.add_argument("--s3-claimers", help="comma-separated S3 claimer counts (default 1,4,16)")
    parser.add_argument(
        "--s3-latency-drain",
        type=int,
        help="s3latency: messages drained by claimer processes (default 2,000; quick 96)",
    )
    parser.add_argument(
        "--localstack-python",
        default=os.environ.get("FILESPOOL_LOCALSTACK_PYTHON"),
        help="python of a localstack-core environment (default $FILESPOOL_LOCALSTACK_PYTHON; "
        "unset: no LocalStack)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated sections to run"
    )
    parser.add_argument(
        "--disk-dir", default=tempfile.gettempdir(), help="a directory on the project's disk"
    )
    parser.add_argument("--tmpfs-dir", default="/dev/shm", help="a directory on tmpfs ('' to skip)")
    parser.add_argument(
        "--json", default="bench-results.json", help="where to write the JSON results"
    )
    parser.add_argument(
        "--plot", default="bench-results.png", help="where to write the plot ('' for none)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (small N, 1 repetition; the s3 sections ~1.5 min)",
    )
    args = parser.parse_args(argv)
    config = Config()
    if args.quick:
        config = Config(
            messages=1_000,
            repeat=1,
            disk_messages=500,
            durable_disk_messages=100,
            depths=(1_000, 5_000),
            depth_claims=300,
            consumers=(1, 2, 4),
            s3_messages=20,
            s3_drain_messages=32,
            s3_latency_messages=32,
            s3_latency_drain=96,
            s3_latency_single=8,
        )
    for option in [
        "messages",
        "repeat",
        "disk_messages",
        "durable_disk_messages",
        "s3_messages",
        "s3_drain_messages",
        "s3_latency_drain",
    ]:
        if getattr(args, option):  # given on the command line: overrides the (quick) default
            setattr(config, option, getattr(args, option))
    for option in ("depths", "consumers", "s3_claimers"):
        if getattr(args, option):
            setattr(config, option, tuple(int(value) for value in getattr(args, option).split(",")))
    config.localstack_python = args.localstack_python or None
    config.places = places(args.disk_dir, args.tmpfs_dir)
    for place in config.places:
        kind = filesystem_type(place.root)
        if (place.kind == "tmpfs") != (kind == "tmpfs"):
            print(f"warning: {place.kind} directory {place.root} is on {kind}", file=sys.stderr)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return args, config


# Targets: each takes the results of all sections and gives (figure, met) lines. A check
# with "required" (a message lost or claimed twice, a server that did not start) fails the
# run when missed; timing targets are reported only, being at the mercy of the machine.
Check = dict[str, Any]


def local_targets(results: dict[str, Any]) -> list[Check]:
    """On tmpfs, the round trip against the floor that makes the same flushes (fast: the
    syscall floor; durable: floor + dir fsync); on disk, where the flushes dominate, the
    figure is stated. Then filespool against each peer."""
    checks: list[Check] = []
    rows = results.get("local", {}).get("rows", [])
    for place in sorted({row["place"] for row in rows}):
        for mode in ("fast", "durable"):
            group = [r for r in rows if r["place"] == place and r["mode"] == mode]
            mine = [r for r in group if r["contender"] == "filespool"]
            if not mine:
                continue
            floor = "floor + dir fsync" if mode == "durable" else "floor (syscalls)"
            same = next(r for r in group if r["contender"] == floor)

            ratio, cpu_ratio = (
                mine[0]["vs_floor"][phase] / same["vs_floor"][phase]
                for phase in ("round trip", "round trip CPU")
            )
            low, high = mine[0]["vs_floor_range"]["round trip"]
            checks.append(
                {
                    "target": f"local round trip >= {ROUND_TRIP_TARGET:.0%} of {floor} "
                    f"({place}, {mode})",
                    "figure": f"{ratio:.0%} wall (against the syscall floor: "
                    f"{mine[0]['vs_floor']['round trip']:.0%}, range {low:.0%}-{high:.0%}), "
                    f"{cpu_ratio:.0%} CPU",
                    "met": ratio >= ROUND_TRIP_TARGET if place == "tmpfs" else None,
                }
            )
            peers = [
                r
                for r in group
                if r["contender"] not in ("filespool",) and not r["contender"].startswith("floor")
            ]
            for peer in peers:
                advantage = mine[0]["vs_floor"]["round trip"] / peer["vs_floor"]["round trip"]
                checks.append(
                    {
                        "target": f"faster than {peer['contender']} ({place}, {mode})",
                        "figure": f"filespool / peer = {advantage:.2f}x",
                        "met": advantage > 1.0,
                    }
                )
    return checks


def depth_targets(results: dict[str, Any]) -> list[Check]:
    rows = results.get("depth", {}).get("rows", [])
    checks = []
    for row in rows:
        if row["vs_shallowest"] == 1.0 and row["depth"] == min(r["depth"] for r in rows):
            continue
        checks.append(
            {
                "target": (
                    f"claim at depth {row['depth']:,} >= {DEPTH_TARGET:.0%} "
                    f"of shallowest ({row['place']})"
                ),
                "figure": f"{row['vs_shallowest']:.0%} (steady state after first listing: "
                f"{row['steady_vs_shallowest']:.0%}; the floor's system calls at this depth: "
                f"{row['floor_vs_shallowest']:.0%} of theirs at the shallowest)",
                "met": row["vs_shallowest"] >= DEPTH_TARGET,
            }
        )
    return checks


def depth_memory_targets(results: dict[str, Any]) -> list[Check]:
    """A claimer's memory does not grow with the depth of new/ (one page of names)."""
    rows = results.get("depth", {}).get("rows", [])
    checks = []
    for place in sorted({row["place"] for row in rows}):
        group = sorted((r for r in rows if r["place"] == place), key=lambda r: r["depth"])
        if len(group) < 2:
            continue
        shallow, deep = group[0], group[-1]
        growth = deep["claim_peak_mib"] - shallow["claim_peak_mib"]
        checks.append(
            {
                "target": f"claimer memory flat: peak at depth {deep['depth']:,} within "
                f"{DEPTH_MEMORY_SLACK_MIB} MiB of depth {shallow['depth']:,} ({place})",
                "figure": f"{deep['claim_peak_mib']:.2f} MiB against "
                f"{shallow['claim_peak_mib']:.2f} MiB",
                "met": growth <= DEPTH_MEMORY_SLACK_MIB,
            }
        )
    return checks


def concurrency_targets(results: dict[str, Any]) -> list[Check]:
    rows = results.get("concurrency", {}).get("rows", [])
    checks = []
    for row in rows:
        if row["consumers"] == 1:
            continue
        checks.append(
            {
                "target": (
                    f"{row['consumers']} consumers >= 1 consumer's throughput ({row['place']})"
                ),
                "figure": f"{row['vs_one']:.2f}x median, {row['min_vs_one']:.2f}x worst",
                "met": row["vs_one"] >= 1.0,
            }
        )
    if rows:
        target = "every message claimed exactly once in every concurrent run"
        checks.append(_exactly_once(target, rows, problems=None))
    return checks


def s3_targets(results: dict[str, Any]) -> list[Check]:
    """Requests per message on the native copy path (the fallback's cost is stated: met None)."""
    section = results.get("s3", {})
    checks: list[Check] = []
    for row in section.get("requests", []):
        where = f"{row['server']} {row['config']}, {row['method']}"
        figure = f"{row['counted']:.2f} + LIST {row['list_per_1000']:.1f}/1,000"
        for what, extra in row["stated_extra"].items():
            figure += f"; stated apart: {extra['per_message']:.2f} {what} ({extra['why']})"
        if row["path"] != "native copy":
            checks.append(
                {
                    "target": f"S3 fallback path's cost, requests per message ({where})",
                    "figure": figure + f" (native target: {S3_REQUEST_TARGET})",
                    "met": None,
                }
            )
            continue
        checks.append(
            {
                "target": (
                    f"S3 requests per message <= {S3_REQUEST_TARGET} + amortized LIST, "
                    f"native conditional-copy path ({where})"
                ),
                "figure": figure,
                "met": row["counted"] <= S3_REQUEST_TARGET + 1e-9,
            }
        )
    throughput = section.get("throughput", [])
    if throughput:
        target = "every S3 message claimed exactly once in every concurrent run"
        problems = [problem for row in throughput for problem in row["problems"]]
        checks.append(_exactly_once(target, throughput, problems))
    status = section.get("servers", {}).get("LocalStack", "")
    if status.startswith("FAILED"):
        checks.append(_not_started("LocalStack", status))
    return checks


def batch_targets(results: dict[str, Any]) -> list[Check]:
    rows = results.get("batch", {}).get("rows", [])
    return [
        {
            "target": (
                f"durable deliver_many >= {BATCH_TARGET:g}x the per-message durable floor "
                f"({row['place']})"
            ),
            "figure": f"{row['wall vs floor']:.2f}x wall, {row['cpu vs floor']:.2f}x CPU",
            # A target on disk, where flushes cost; on tmpfs they cost nothing to share.
            "met": row["wall vs floor"] >= BATCH_TARGET if row["place"] == "disk" else None,
        }
        for row in rows
        if row["contender"].startswith("filespool deliver_many")
    ]


def s3_latency_targets(results: dict[str, Any]) -> list[Check]:
    section = results.get("s3latency", {})
    checks: list[Check] = []
    rows = section.get("batches", [])
    for row in rows:
        if row["mode"] == "one at a time":
            continue
        one = next(
            r
            for r in rows
            if (r["latency_ms"], r["step"], r["mode"])
            == (row["latency_ms"], row["step"], "one at a time")
        )
        added = row["requests_per_message"] - one["requests_per_message"]
        checks.append(
            {
                "target": f"S3 {row['mode']} {row['step']} adds no requests per message "
                f"({row['latency_ms']:.0f} ms)",
                "figure": f"{row['requests_per_message']:.2f} {row['mode']}, "
                f"{one['requests_per_message']:.2f} one at a time",
                "met": added <= 0.01,
            }
        )
        if row["latency_ms"]:
            checks.append(
                {
                    "target": f"S3 {row['mode']} {row['step']} >= {S3_BATCH_TARGET:g}x one at "
                    f"a time ({row['latency_ms']:.0f} ms latency)",
                    "figure": f"{row['vs_one_at_a_time']:.1f}x ({row['msg_per_s']:.0f} msg/s, "
                    f"{row['cpu_ms_per_message']:.1f} ms CPU/msg in the client, "
                    f"{row.get('server_cpu_ms_per_message', 0.0):.1f} in the servers, "
                    f"which share the machine's {os.cpu_count()} CPUs)",
                    "met": row["vs_one_at_a_time"] >= S3_BATCH_TARGET,
                }
            )
    for row in section.get("claimers", []):
        if row["claimers"] != 16:
            continue
        checks.append(
            {
                "target": f"16 S3 claimer processes >= {S3_CLAIMERS_TARGET:g}x one "
                f"({row['latency_ms']:.0f} ms latency)",
                "figure": f"{row['vs_one']:.1f}x ({row['msg_per_s']:.0f} msg/s)",
                "met": row["vs_one"] >= S3_CLAIMERS_TARGET,
            }
        )
        checks.append(
            {
                "target": f"16 S3 claimer processes lose <= {S3_LOST_RACES_TARGET:.0%} of "
                "claims to races",
                "figure": f"{row['lost_share']:.1%} median, {row['lost_share_max']:.1%} worst",
                "met": row["lost_share_max"] <= S3_LOST_RACES_TARGET,
            }
        )
    claimers = section.get("claimers", [])
    if claimers:
        target = "every message claimed exactly once by S3 claimer processes"
        checks.append(_exactly_once(target, claimers, claimers[0]["problems"]))
    if section.get("server", "").startswith("FAILED"):
        checks.append(_not_started("LocalStack", section["server"]))
    return checks


def azure_targets(results: dict[str, Any]) -> list[Check]:
    """Claimer ratios are stated; every message claimed exactly once is a target."""
    section = results.get("azure", {})
    rows = section.get("rows", [])
    checks: list[Check] = [
        {
            "target": f"{row['claimers']} Azure claimers against one (Azurite)",
            "figure": f"{row['vs_one']:.2f}x median, {row['min_vs_one']:.2f}x worst",
            "met": None,
        }
        for row in rows
        if row["claimers"] != 1
    ]
    if rows:
        target = "every Azure message claimed exactly once in every concurrent run"
        checks.append(_exactly_once(target, rows, rows[0]["problems"]))
    if section.get("server", "").startswith("FAILED"):
        checks.append(_not_started("Azurite", section["server"]))
    return checks


def _exactly_once(target: str, rows: list[dict[str, Any]], problems: list[str] | None) -> Check:
    """A required check: every run's messages claimed exactly once (`problems`, if the
    section reports them, say what went wrong)."""
    every = all(row["exactly_once"] for row in rows)
    figure = "yes" if every else "NO" if problems is None else "NO: " + "; ".join(problems)
    return {"target": target, "figure": figure, "met": every, "required": True}


def _not_started(server: str, status: str) -> Check:
    """A required check, missed: `server` did not start (`status` says why)."""
    return {"target": f"{server} started", "figure": status, "met": False, "required": True}


TARGETS: list[Callable[[dict[str, Any]], list[Check]]] = [
    local_targets,
    depth_targets,
    depth_memory_targets,
    concurrency_targets,
    s3_targets,
    batch_targets,
    s3_latency_targets,
    azure_targets,
]


def plot(results: dict[str, Any], path: str) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    local_rows = results.get("local", {}).get("rows", [])
    concurrency_rows = results.get("concurrency", {}).get("rows", [])
    figure, axes = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={"width_ratios": [3, 1]})
    groups = sorted({(r["place"], r["mode"]) for r in local_rows})
    y = 0
    ticks, labels = [], []
    for place, mode in groups:
        for row in [r for r in local_rows if (r["place"], r["mode"]) == (place, mode)]:
            color = (
                "tab:blue"
                if row["contender"] == "filespool"
                else ("tab:gray" if row["contender"].startswith("floor") else "tab:orange")
            )
            axes[0].barh(y, row["vs_floor"]["round trip"], color=color)
            ticks.append(y)
            labels.append(f"{place}/{mode}: {row['contender']}")
            y += 1
        y += 1
    axes[0].axvline(ROUND_TRIP_TARGET, color="red", linestyle="--", linewidth=1)
    axes[0].set_yticks(ticks, labels, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set_xlabel("round-trip throughput / floor (median of paired ratios)")
    axes[0].set_title("1 KiB messages, deliver all then claim+ack all")
    for place in sorted({r["place"] for r in concurrency_rows}):
        rows = [r for r in concurrency_rows if r["place"] == place]
        axes[1].plot(
            [r["consumers"] for r in rows], [r["vs_one"] for r in rows], marker="o", label=place
        )
    if concurrency_rows:
        axes[1].axhline(1.0, color="red", linestyle="--", linewidth=1)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("consumer processes")
        axes[1].set_ylabel("total throughput / 1 consumer")
        axes[1].set_title("draining one spool")
        axes[1].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return f"plot written to {path}"


def main(argv: list[str] | None = None) -> int:
    args, config = parse(argv)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    chosen = [name for name in args.sections.split(",") if name]
    import filespool

    results: dict[str, Any] = {}
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "filespool": getattr(filespool, "__version__", None),
        "filespool_path": os.path.dirname(filespool.__file__),
        "places": {
            p.kind: {"root": p.root, "fstype": filesystem_type(p.root)} for p in config.places
        },
        "config": {key: value for key, value in vars(config).items() if key != "places"},
    }
    modules = {}
    began = time.perf_counter()
    for name in chosen:
        module = importlib.import_module(SECTIONS[name])
        modules[name] = module
        log(f"section {name}")
        started = time.perf_counter()
        results[name] = module.run(config, log)
        results[name]["seconds"] = time.perf_counter() - started
    meta["seconds"] = time.perf_counter() - began
    checks = [check for target in TARGETS for check in target(results)]
    print(
        f"filespool from {meta['filespool_path']}; python {meta['python']}; {meta['cpus']} CPUs; "
        + "; ".join(
            f"{kind}: {info['root']} ({info['fstype']})" for kind, info in meta["places"].items()
        )
    )
    print(
        "Modes: 'durable' = fsync every message (filespool durable=True, mailbox.Maildir,"
        " SQLiteAckQueue); 'fast' = no per-message fsync (filespool durable=False,"
        " gocept.filestore, dirq, persist-queue file Queue). Ratios: median over repetitions"
        " of (contender / floor in the same repetition)."
    )
    for name in chosen:
        print(f"\n== {name} ({results[name]['seconds']:.0f} s) ==")
        for line in modules[name].summarize(results[name]):
            print(line)
    print("\n== targets ==")
    for check in checks:
        status = "stated" if check["met"] is None else "met" if check["met"] else "MISSED"
        print(f"[{status:6}] {check['target']}: {check['figure']}")
    if args.plot and "local" in results:
        message = plot(results, args.plot)
        meta["plot"] = message
        print(message)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"meta": meta, "results": results, "targets": checks}, file, indent=1)
        print(f"JSON written to {args.json}")
    print(f"total {meta['seconds']:.0f} s")
    missed = [check["target"] for check in checks if check.get("required") and not check["met"]]
    if missed:
        print(f"FAILED: {'; '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
