"""Benchmark: ``cxr serve`` throughput with 1 and 8 concurrent clients, with and without micro-batching, and memory.

Writes a ResNet-18 artifact (random init, GAP head, 224 px, 14 findings; ``--onnx`` also exports it and serves the
``.onnx``), starts ``cxr serve`` on it as a subprocess on 127.0.0.1, and posts a real 1024x1024 NIH radiograph (PNG,
``tests/fixtures/nih-sample``) to ``/api/predict``: ``--requests`` requests from one client, then the same number from 8
clients at once (threads, one keep-alive connection each). It does so twice in one run: with ``--batch-max 1`` (no
micro-batching) and with the server's default batching (or ``--batch-max``/``--batch-wait-ms``). Prints requests/s,
the median latency of one client, the ratios batched / unbatched (issue 24: 8 clients >= 1.5x, one client's p50
within +10 %), the load average, and the memory (RSS and its private part) of the server process(es) after loading
and after the run. Loopback only. Not a test.

    .venv/bin/python benchmarks/serve.py [--requests 80] [--workers 1] [--onnx] [--batch-max 8] [--batch-wait-ms 10]
                                         [--precision fp32|bf16|auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from cxr.labels import FINDINGS

IMAGE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nih-sample" / "images" / "00000013_003.png"


def build(folder: Path, size: int, onnx: bool) -> Path:
    import torch

    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", len(FINDINGS), head="gap", input_size=size, labels=list(FINDINGS))
    checkpoint = write_artifact(folder / "resnet18.ckpt", model, list(FINDINGS), make_preprocessing(model, size, 1.0))
    if not onnx:
        return checkpoint
    from cxr.inference.export import export_onnx

    return Path(export_onnx(checkpoint, folder / "resnet18.onnx")["path"])


def memory_mib(pid: int) -> dict[str, float]:
    """RSS, and what of it is the process's own (private: what each extra worker adds; shared library pages such
    as torch's are counted once by the kernel however many workers map them), from ``/proc/PID/smaps_rollup``."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {"rss": fields["Rss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def run_clients(url: str, data: bytes, clients: int, requests: int) -> tuple[float, float]:
    """``requests`` predictions shared among ``clients`` threads; requests per second and the median latency (s)."""
    counts = [requests // clients + (1 if k < requests % clients else 0) for k in range(clients)]
    failures: list[str] = []
    latencies: list[float] = []

    def client(count: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as http:
            for _ in range(count):
                start = time.perf_counter()
                answer = http.post("/api/predict", files={"file": ("x.png", data, "image/png")})
                latencies.append(time.perf_counter() - start)
                if answer.status_code != 200:
                    failures.append(f"{answer.status_code} {answer.text[:200]}")

    threads = [threading.Thread(target=client, args=(count,)) for count in counts]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return requests / elapsed, statistics.median(latencies)


def measure(model: Path, args, batching: list[str]) -> dict:
    """Start ``cxr serve MODEL`` with ``batching`` options, measure 1 and 8 clients, stop it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cxr.cli", "serve", str(model), "--port", str(port)]
    command += ["--workers", str(args.workers), "--precision", args.precision, *batching]
    env = {k: v for k, v in os.environ.items() if k not in ("CXR_API_KEY", "CXR_API_KEY_FILE")}
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(1200):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit(f"cxr serve exited with status {server.returncode}") from None
                time.sleep(0.1)
        pids = children(server.pid) if args.workers > 1 else [server.pid]
        idle = [memory_mib(pid) for pid in pids]
        run_clients(url, IMAGE.read_bytes(), 4, 8)  # warm-up: the first calls allocate the model's buffers
        one, p50 = run_clients(url, IMAGE.read_bytes(), 1, args.requests)
        eight, _ = run_clients(url, IMAGE.read_bytes(), 8, args.requests)
        busy = [memory_mib(pid) for pid in pids]
    finally:
        server.terminate()
        server.wait(60)
    return {"one": one, "p50": p50, "eight": eight, "pids": pids, "idle": idle, "busy": busy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=80, help="Requests per measurement (1 client, 8 clients).")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size", type=int, default=224, help="Model input size.")
    parser.add_argument("--onnx", action="store_true", help="Serve the ONNX export instead of the checkpoint.")
    parser.add_argument("--batch-max", type=int, default=None, help="Batched run's --batch-max (default: serve's).")
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="Batched run's --batch-wait-ms.")
    parser.add_argument("--precision", default="fp32", help="Both servers' --precision (fp32, bf16, auto).")
    args = parser.parse_args()

    batched = [*(["--batch-max", str(args.batch_max)] if args.batch_max else []),
               *(["--batch-wait-ms", str(args.batch_wait_ms)] if args.batch_wait_ms is not None else [])]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model = build(Path(tmp), args.size, args.onnx)
        runs = {"unbatched": measure(model, args, ["--batch-max", "1"]), "batched": measure(model, args, batched)}
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; cxr serve --workers {args.workers} --precision {args.precision}, resnet18 "
          f"{args.size} px ({'onnx' if args.onnx else 'torch'}), {IMAGE.stat().st_size // 1024} kB 1024x1024 PNG, "
          f"{args.requests} requests per measurement; batched: {' '.join(batched) or 'the defaults'}")  # fmt: skip
    for name, run in runs.items():
        print(f"{name:10} 1 client {run['one']:6.2f} req/s (p50 {1000 * run['p50']:.1f} ms), 8 clients "
              f"{run['eight']:6.2f} req/s, 8 / 1 = {run['eight'] / run['one']:.2f}")  # fmt: skip
    off, on = runs["unbatched"], runs["batched"]
    print(f"batched / unbatched, 8 clients: {on['eight'] / off['eight']:.2f} (goal >= 1.5)")
    print(f"batched / unbatched, p50 of 1 client: {on['p50'] / off['p50']:.2f} (goal <= 1.10)")
    for name, run in runs.items():
        for pid, before, after in zip(run["pids"], run["idle"], run["busy"], strict=True):
            print(f"{name} process {pid}: RSS {before['rss']:.0f} MiB (private {before['private']:.0f}) after "
                  f"loading, {after['rss']:.0f} MiB (private {after['private']:.0f}) after the run")  # fmt: skip


if __name__ == "__main__":
    main()
