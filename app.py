"""specviz app: `python app.py [--host 127.0.0.1] [--port 7860] [--device cpu|cuda|mps|auto]`.

Starts offline (no analytics, no hub calls for the embedded models) and warms the embedded pair up
before serving, so the first run does not pay the model load.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("SPECVIZ_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SPECVIZ_PORT", "7860")))
    parser.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.device:
        os.environ["SPECVIZ_DEVICE"] = args.device
    if not is_loopback(args.host):
        os.environ.setdefault("SPECVIZ_PUBLIC", "1")  # strangers can reach it: curated models only (README)
    from specviz.app import ui

    ui.warm_engines()  # every engine worker loads the pair: first request is fast, missing assets fail early
    print(
        f"specviz: models ready in {time.perf_counter() - start:.1f} s; serving on http://{args.host}:{args.port}",
        flush=True,
    )
    ui.launch(args.host, args.port)


if __name__ == "__main__":
    main()
