"""``python -m simulators {fills,aum}``: the fill servers and the AUM server of the demo."""

from __future__ import annotations

import argparse
import logging
import secrets
import threading
import time
from collections.abc import Sequence

from controller.serving import (
    LOG_LEVELS,
    configure_logging,
    positive_int,
    positive_seconds,
    stop_on_signals,
    wait_for_signal,
)
from controller.transport import (
    TLSConfig,
    TLSError,
    add_client_arguments,
    check_files,
    client_config,
)
from controller.validation import DEFAULT_TICKERS
from simulators.aum import AumServer
from simulators.fills import PER_FILL_OUTPUT_MAX_RATE, FillGenerator, FillServer, FillStats

log = logging.getLogger("simulators")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of both simulators."""
    parser = argparse.ArgumentParser(
        prog="python -m simulators",
        description="Simulated execution venues (fills) and AUM source (aum) for the controller.",
    )
    parser.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="logging level")
    commands = parser.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter
    # Time plus a random suffix: two runs started in the same second still get distinct ids.
    run_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"

    fills = commands.add_parser(
        "fills",
        formatter_class=defaults,
        help="stream random fills (Poisson arrivals) to the controller",
        description=(
            "Fill servers: random fills at Poisson-distributed times over StreamFills. Every "
            "unacknowledged fill is kept and resent after a reconnect; repeats are harmless."
        ),
    )
    fills.add_argument(
        "--controller",
        default="localhost:9998",
        help="controller host:port, or several comma-separated (a leader and its standbys on one"
        " PostgreSQL journal): messages go to whichever serves, unanswered ones are resent there",
    )
    fills.add_argument(
        "--rate", type=float, default=1.0, help="fills per second per server (0 = as fast as acked)"
    )
    fills.add_argument("--sell-ratio", type=float, default=0.2, help="share of fills that sell")
    fills.add_argument("--seed", type=int, default=None, help="seed for a reproducible stream")
    fills.add_argument(
        "--count", type=positive_int, default=None, help="stop after N fills per server"
    )
    fills.add_argument("--batch", type=positive_int, default=1, help="fills per stream message")
    fills.add_argument("--servers", type=positive_int, default=1, help="independent fill servers")
    fills.add_argument(
        "--tickers", default=",".join(DEFAULT_TICKERS), help="comma-separated tickers to trade"
    )
    fills.add_argument(
        "--run-id",
        default=run_id,
        help="fill ids are <id-prefix><run-id>-v<server>-<n>; unique per run",
    )
    fills.add_argument(
        "--id-prefix",
        default=None,
        help="start of every fill id (default: '<identity>/' with a --tls-cert, the scope the"
        " controller's policy gives a venue identity; else none)",
    )
    add_client_arguments(fills, peer="the controller")

    aum = commands.add_parser(
        "aum",
        formatter_class=defaults,
        help="publish a random account split every interval",
        description=(
            "AUM server: a random split over --accounts accounts, percentages with two decimals "
            "summing to exactly 100, sent at once and then every --interval seconds."
        ),
    )
    aum.add_argument(
        "--controller",
        default="localhost:9998",
        help="controller host:port, or several comma-separated (a leader and its standbys on one"
        " PostgreSQL journal): messages go to whichever serves, unanswered ones are resent there",
    )
    aum.add_argument(
        "--interval", type=positive_seconds, default=30.0, help="seconds between splits"
    )
    aum.add_argument("--accounts", type=positive_int, default=5, help="accounts in each split")
    aum.add_argument("--seed", type=int, default=None, help="seed for reproducible splits")
    aum.add_argument("--run-id", default=run_id, help="split ids are aum-<run-id>-<n>")
    add_client_arguments(aum, peer="the controller")
    args = parser.parse_args(argv)
    if args.command == "fills":
        if not 0 <= args.rate < float("inf"):
            parser.error("--rate must be >= 0")
        if not 0 <= args.sell_ratio <= 1:
            parser.error("--sell-ratio must be between 0 and 1")
    return args


def run_fills(args: argparse.Namespace, tls: TLSConfig, identity: str) -> int:
    """Run the fill servers until --count is reached and acknowledged, or a signal."""
    tickers = tuple(t.strip() for t in args.tickers.split(",") if t.strip())
    if args.id_prefix is None:
        args.id_prefix = f"{identity}/" if identity else ""
    stats = FillStats()
    servers = [
        FillServer(
            args.controller,
            FillGenerator(
                (args.seed if args.seed is not None else time.time_ns()) + k,
                f"{args.id_prefix}{args.run_id}-v{k}",
                tickers,
                args.sell_ratio,
            ),
            args.rate,
            args.batch,
            args.count,
            stats,
            f"fills-v{k}",
            tls,
        )
        for k in range(args.servers)
    ]
    threads = [
        threading.Thread(target=s.run, name=f"fill-server-{k}") for k, s in enumerate(servers)
    ]
    stop = threading.Event()
    stop_on_signals(stop)
    for thread in threads:
        thread.start()
    summary = not (args.batch == 1 and 0 < args.rate <= PER_FILL_OUTPUT_MAX_RATE)
    last = 0
    while any(t.is_alive() for t in threads):
        if stop.wait(1.0):
            for server in servers:
                server.stop()
            break
        if summary:
            with stats.lock:
                done = stats.allocated + stats.pending + stats.duplicates + stats.rejected
            print(f"fills acknowledged: {done - last}/s, {done} total", flush=True)
            last = done
    for thread in threads:
        thread.join()
    with stats.lock:
        log.info(
            "finished",
            extra={
                "generated": stats.generated,
                "allocated": stats.allocated,
                "pending": stats.pending,
                "duplicates": stats.duplicates,
                "rejected": stats.rejected,
                "net": dict(sorted(stats.net.items())),
            },
        )
    return 0


def run_aum(args: argparse.Namespace, tls: TLSConfig) -> int:
    """Publish splits until a signal."""
    server = AumServer(
        args.controller, args.interval, args.accounts, args.seed, f"aum-{args.run_id}", tls
    )
    thread = threading.Thread(target=server.run, name="aum-server")
    thread.start()
    wait_for_signal()
    server.stop()
    thread.join()
    log.info("finished")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m simulators``."""
    args = parse_args(argv)
    configure_logging(args.log_level)
    tls = client_config(args)
    try:
        identity = check_files(tls)
    except TLSError as error:
        log.critical("cannot start: %s", error)
        return 2
    return run_fills(args, tls, identity) if args.command == "fills" else run_aum(args, tls)


if __name__ == "__main__":
    raise SystemExit(main())
