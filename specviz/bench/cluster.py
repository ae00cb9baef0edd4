"""`python -m specviz.bench --ray ADDRESS|local[:N]`: the bench's units on Ray workers.

One worker per accelerator (a GPU each), or one per CPU node using all its cores (torch's threads set to
match; `--worker-cpus` splits a node), or N one-core workers on this machine (`local:N`, a rehearsal).
Each worker loads the pair once through `load_pair`, the self-check included, and keeps it across units;
a worker that cannot load, or that holds other weights or other code than the rest, takes no units.
Free workers take the next unit (`bench.run_unit`: one prompt with every method and repeat, interleaved,
so every ratio comes from one device). A unit whose worker dies (Ray restarts the actor) or that raises is
tried again on a live worker, preferably another; one that fails twice is reported, never dropped.
Every finished unit goes to the journal (`specviz.bench.journal`) as it arrives, so Ctrl-C, or a lost driver,
leaves a result that the same command completes.

Ray is imported in this module only, and only once a run starts. A local instance listens on loopback only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from specviz.bench.journal import check_journal, open_journal
from specviz.bench.matrix import Outcome, PairInfo, device_label, plain_rows, run_unit, warm_up
from specviz.models.fingerprint import loaded_pair_fingerprint
from specviz.models.hub import EMBEDDED, HF_ID, NESTED
from specviz.models.pair import load_pair

ADDRESS = re.compile(r"^(auto|ray://[A-Za-z0-9._-]+(:\d{1,5})?|[A-Za-z0-9._-]+:\d{1,5})$")
MAX_ATTEMPTS = 2  # a unit that fails this often is reported as failed
MAX_RESTARTS = 3  # Ray restarts a dead worker this often (each restart loads the pair again)
PROBE_SECONDS = 600  # how long a restarted worker may take to load its pair again before it counts as gone
LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # node address 127.0.0.1: every server on loopback
    "RAY_USAGE_STATS_ENABLED": "0",
}


@dataclass(frozen=True)
class RayTarget:
    """Where the workers run: an existing cluster's address, or a private local instance of N CPU workers."""

    address: str | None  # "auto", "host:port", "ray://host:port"; None: start a local instance
    local_workers: int | None  # local:N -> N one-core workers (None for a cluster)

    @classmethod
    def parse(cls, text: str) -> "RayTarget":
        text = text.strip()
        if text == "local" or text.startswith("local:"):
            count = text.partition(":")[2] or str(os.cpu_count() or 1)
            if not count.isdigit() or not 1 <= int(count) <= 256:
                raise ValueError(f"--ray {text!r}: local:N takes N between 1 and 256 workers")
            return cls(None, int(count))
        if not ADDRESS.match(text):
            raise ValueError(
                f"--ray {text!r}: give a cluster address (auto, host:port or ray://host:port) or local[:N]"
            )
        return cls(text, None)

    @property
    def loopback(self) -> bool:
        """A local instance, or a cluster on this machine's loopback: Ray must not turn 127.0.0.1 into the
        machine's network address (it does unless told otherwise, and then cannot reach a loopback head)."""
        if self.address is None:
            return True
        host = self.address.removeprefix("ray://").rpartition(":")[0] or self.address
        return host in ("127.0.0.1", "localhost") or host.startswith("127.")


@dataclass(frozen=True)
class Slot:
    """One worker's place and share of a node."""

    node_id: str | None  # the node it is pinned to (None: wherever Ray puts it)
    cpus: int  # Ray CPUs it reserves
    gpus: int  # Ray GPUs it reserves (0 or 1)
    threads: int  # torch's thread count in it
    device: str  # what load_pair gets: "cuda" or "cpu"


def plan_slots(
    nodes: list[dict[str, Any]],
    device: str | None = None,
    worker_cpus: int | None = None,
    local_workers: int | None = None,
) -> list[Slot]:
    """Workers for the alive nodes of `ray.nodes()`: one a GPU where there are GPUs (unless --device says cpu),
    else one a CPU node with all its cores (or `worker_cpus` each)."""
    if local_workers:
        return [Slot(None, 1, 0, 1, "cpu")] * local_workers
    alive = [n for n in nodes if n.get("Alive")]
    wants = (device or "").split(":")[0]
    if wants in ("", "cuda"):
        slots = []
        for n in alive:
            gpus, cpus = int(n["Resources"].get("GPU", 0)), int(n["Resources"].get("CPU", 0))
            slots += [Slot(n["NodeID"], 0, 1, max(1, cpus // gpus) if gpus else 1, "cuda")] * gpus
        if slots:
            return slots
        if wants == "cuda":
            raise ValueError("--device cuda, but the Ray cluster has no GPU")
    if wants not in ("", "cpu", "cuda"):
        raise ValueError(f"--device {device!r} with --ray: workers run on 'cuda' (a GPU each) or 'cpu'")
    slots = []
    for n in alive:
        cpus = int(n["Resources"].get("CPU", 0))
        per = min(worker_cpus or cpus, cpus)
        slots += [Slot(n["NodeID"], per, 0, per, "cpu")] * (cpus // per if per else 0)
    if not slots:
        raise ValueError("the Ray cluster has no CPU or GPU for a worker (is every node started with CPUs?)")
    return slots


@dataclass(frozen=True)
class LoadSpec:
    """What every worker loads: load_pair's arguments, and the local paths that must exist on every node."""

    target: str
    draft: str | None
    dtype: str | None
    paths: tuple[str, ...]  # local model folders (absolute where the driver has them)
    downloads: bool  # a model is a hub id: each node downloads it once, so one worker a node loads first


def load_spec(target: str, draft: str | None, dtype: str | None) -> LoadSpec:
    """Local paths made absolute (workers do not share the driver's working directory); hub ids kept."""
    hub = []

    def local(name: str | None) -> tuple[str | None, str | None]:
        if name is None or name.strip() in ("", EMBEDDED):
            return name, None
        base, depth = name.strip(), ""
        if nested := NESTED.match(base):
            base, depth = nested.group(1), f"[:{nested.group(2)}]"
        if base == EMBEDDED:
            return name, None
        path = Path(base).expanduser()
        if path.is_dir():
            return str(path.resolve()) + depth, str(path.resolve())
        if HF_ID.match(base):
            hub.append(base)
            return name, None  # a hub id: each node downloads it once into its own cache
        return name, str(path)

    target, t_path = local(target)
    draft, d_path = local(draft)
    return LoadSpec(target, draft, dtype, tuple(p for p in (t_path, d_path) if p), bool(hub))


def code_digest() -> str:
    """Digest of this specviz's Python sources: workers must run the driver's code."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class WorkerUnfit(RuntimeError):
    """This worker has no usable pair: it takes no units (not the unit's fault)."""


def first_line(exc: BaseException, width: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:width] if text else ''}"


class BenchWorker:
    """One Ray worker: loads the pair once (self-check included) and measures units on it.
    A load that fails leaves the worker unfit instead of crashing it, so the driver can say why."""

    def __init__(self, load: LoadSpec, slot: Slot, name: str, plan, code: str):
        torch.set_num_threads(slot.threads)
        self.plan, self.name, self.pair, self.warm = plan, name, None, False
        self.info: dict[str, Any] = {
            "worker": name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "threads": slot.threads,
            "device": None,
            "dtype": None,
            "fingerprint": None,
            "error": None,
        }
        try:
            missing = [p for p in load.paths if not Path(p).is_dir()]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} not found on {self.info['host']}: a local model path must "
                    f"exist on every node (copy it to the same path, or use a hub id)"
                )
            if code_digest() != code:
                raise ValueError(
                    f"{self.info['host']} runs other specviz code than the driver: install the same "
                    f"commit on every node"
                )
            self.pair = self.load(load, slot)

            self.info.update(
                device=self.device_name(),
                dtype=str(self.pair.dtype).removeprefix("torch."),
                fingerprint=loaded_pair_fingerprint(self.pair),
            )
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which keeps the worker out
            self.pair = None
            self.info["error"] = first_line(exc)

    def load(self, load: LoadSpec, slot: Slot):
        return load_pair(load.target, load.draft, device=slot.device, dtype=load.dtype)

    def device_name(self) -> str:
        label = device_label(self.pair.device)
        if self.pair.device.type == "cuda":  # Ray shows each worker its GPU as cuda:0; name the physical one
            import ray  # Ray: cluster runs only

            ids = ray.get_runtime_context().get_accelerator_ids().get("GPU") or ["0"]
            label = label.replace("cuda:0", f"cuda:{ids[0]}", 1)
        return label

    def describe(self) -> dict[str, Any]:
        return self.info

    def run(self, unit) -> dict[str, Any]:
        if self.pair is None:
            raise WorkerUnfit(self.info["error"])
        if not self.warm and unit.kind == "prompt":
            warm_up(self.pair, list(self.plan.single), unit.prompts[0]["prompt"])
            self.warm = True
        start = time.perf_counter()
        here = {"host": self.info["host"], "device": self.info["device"], "worker": self.name}
        rows = plain_rows([{**row, **here} for row in run_unit(self.pair, self.plan, unit)])
        return {"rows": rows, "where": {**here, "pid": os.getpid()}, "seconds": time.perf_counter() - start}


def check_node(paths: tuple[str, ...], code: str) -> dict[str, Any]:
    """Run once on every node before any worker starts: the model paths and the code are there."""
    return {
        "host": socket.gethostname(),
        "missing": [p for p in paths if not Path(p).is_dir()],
        "code_matches": code_digest() == code,
    }


# ----------------------------------------------------------------------------- the driver
def connect(target: RayTarget) -> bool:
    """Connect to the cluster or start a local instance; True if this call did (so it shuts down after)."""
    if target.loopback and "ray" not in sys.modules:
        os.environ.update({k: os.environ.get(k, v) for k, v in LOOPBACK_ENV.items()})  # read when Ray is imported
    if target.address is None or (target.loopback and (Path.home() / ".ray" / "auth_token").is_file()):
        # Token authentication, said out loud: a new local instance makes its token; a head on this machine's
        # loopback gets this machine's token (Ray sends none to an explicit address unless told to).
        os.environ.setdefault("RAY_AUTH_MODE", "token")

    import ray  # Ray: cluster runs only

    if ray.is_initialized():  # a caller's connection (tests, notebooks): use it and leave it open
        return False
    if target.address not in (None, "auto"):  # Ray itself retries a wrong address for minutes
        host, _, port = target.address.removeprefix("ray://").rpartition(":")
        host, port = (host, port) if host else (port, "10001")  # ray://host: the client's default port
        try:
            socket.create_connection((host, int(port)), timeout=10).close()
        except OSError as exc:
            raise ValueError(
                f"nothing answers at {target.address} ({exc}): is the head started, and is this "
                f"machine in the cluster's network?"
            ) from None
    if target.address is None:
        ray.init(
            address="local",
            num_cpus=target.local_workers,
            num_gpus=0,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=target.address, log_to_driver=False, logging_level=logging.WARNING)
    return True


def check_nodes(spec: LoadSpec, code: str) -> None:
    """Up front, before loading anything: every node has the local model paths and the driver's code."""
    import ray  # Ray: cluster runs only
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # Ray: cluster runs only

    probe = ray.remote(num_cpus=0)(check_node)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            spec.paths, code
        )
        for n in nodes
    ]
    problems = []
    for node, ref in zip(nodes, refs):
        try:
            found = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - typically: specviz not importable there
            problems.append(
                f"node {node.get('NodeManagerAddress')}: {first_line(exc)} (is the repository there, "
                f"with requirements-cluster.txt installed?)"
            )
            continue
        if found["missing"]:
            problems.append(
                f"{found['host']}: {', '.join(found['missing'])} not found (a local model path must "
                f"exist on every node; copy it there or use a hub id)"
            )
        if not found["code_matches"]:
            problems.append(f"{found['host']}: other specviz code than the driver's (install the same commit)")
    if problems:
        raise ValueError("the cluster cannot run this command: " + "; ".join(problems))


def start_workers(
    slots: list[Slot], spec: LoadSpec, plan, code: str, worker_cls=BenchWorker, quiet: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start one actor per slot and wait for each to load; hub models load first on one worker per node,
    so each node downloads them once. Returns the handles and every worker's description."""
    import ray  # Ray: cluster runs only
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # Ray: cluster runs only

    actor = ray.remote(worker_cls)
    handles: dict[str, Any] = {}

    def start(i: int, slot: Slot) -> None:
        opts: dict[str, Any] = {
            "num_cpus": slot.cpus,
            "num_gpus": slot.gpus,
            "max_restarts": MAX_RESTARTS,
            "max_task_retries": 0,
        }
        if slot.node_id:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=False)
        handles[f"w{i}"] = actor.options(**opts).remote(spec, slot, f"w{i}", plan, code)

    firsts: dict[str | None, int] = {}
    for i, slot in enumerate(slots):
        firsts.setdefault(slot.node_id, i)
    rest = [i for i in range(len(slots)) if i not in firsts.values()]
    order = [sorted(firsts.values()), rest] if spec.downloads and rest else [list(range(len(slots)))]
    infos: dict[str, dict[str, Any]] = {}
    for group in order:
        for i in group:
            start(i, slots[i])
        refs = {handles[f"w{i}"].describe.remote(): f"w{i}" for i in group}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=5.0)
            for ref in ready:
                name = refs.pop(ref)
                try:
                    infos[name] = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the actor could not even start
                    infos[name] = {"worker": name, "error": first_line(exc)}
                if not quiet:
                    info = infos[name]
                    print(
                        f"worker {name}: "
                        + (
                            f"unfit, takes no units: {info['error']}"
                            if info.get("error")
                            else f"{info['host']} {info['device']} ({info['threads']} threads)"
                        ),
                        file=sys.stderr,
                    )
    return handles, [infos[f"w{i}"] for i in range(len(slots))]


def agree(infos: list[dict[str, Any]]) -> str:
    """The pair fingerprint the fit workers share; a worker with another one (other files at the same path)
    is marked unfit. Raises when no worker is fit."""
    fit = [i for i in infos if not i.get("error")]
    if not fit:
        raise ValueError(
            "no Ray worker could load the pair: " + "; ".join(f"{i['worker']}: {i['error']}" for i in infos)
        )
    common, _ = Counter(i["fingerprint"] for i in fit).most_common(1)[0]
    for info in fit:
        if info["fingerprint"] != common:
            info["error"] = (
                f"loaded other weights than the other workers (fingerprint {info['fingerprint']}, "
                f"theirs {common}): the same path holds different files on {info['host']}?"
            )
    return common


@dataclass
class Dispatch:
    """The driver's bookkeeping while units are out."""

    pending: list  # units waiting, in order
    errors: dict[int, list[str]] = field(default_factory=dict)  # unit index -> each failed attempt's error
    tried: dict[int, set[str]] = field(default_factory=dict)  # unit index -> workers it failed on
    rows: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # unit index -> rows (finished units)
    failed: list[dict[str, Any]] = field(default_factory=list)  # units that failed MAX_ATTEMPTS times

    def pick(self, worker: str, live: set[str]):
        """The first waiting unit this worker has not failed, or any if every live worker failed it."""
        for unit in self.pending:
            tried = self.tried.get(unit.index, set())
            if worker not in tried or live <= tried:
                self.pending.remove(unit)
                return unit
        return None


def dispatch(
    handles: dict[str, Any], fit: list[str], units: list, journal, bar, fingerprint: str
) -> tuple[Dispatch, bool]:
    """Hand units to free workers until all finished or failed twice; True as second value if interrupted.
    A restarted worker comes back only with a clean self-check and the same weights (`fingerprint`)."""
    import ray  # Ray: cluster runs only
    from ray.exceptions import ActorDiedError, RayActorError  # Ray: cluster runs only

    state = Dispatch(pending=list(units))
    idle = list(fit)
    running: dict[Any, tuple[str, Any]] = {}
    probing: dict[Any, tuple[str, float]] = {}

    def fail(unit, worker: str, error: str) -> None:
        state.errors.setdefault(unit.index, []).append(f"{worker}: {error}")
        state.tried.setdefault(unit.index, set()).add(worker)
        if len(state.errors[unit.index]) >= MAX_ATTEMPTS:
            journal.record_failed(unit, state.errors[unit.index])
            state.failed.append(
                {
                    "unit": unit.label,
                    "prompt_ids": [p["id"] for p in unit.prompts][:8],
                    "errors": state.errors[unit.index],
                }
            )
            bar.update()
        else:
            state.pending.insert(0, unit)

    try:
        while state.pending or running:
            live = set(idle) | {w for w, _ in running.values()} | {w for w, _ in probing.values()}
            for worker in list(idle):
                unit = state.pick(worker, live)
                if unit is not None:
                    idle.remove(worker)
                    running[handles[worker].run.remote(unit)] = (worker, unit)
            if not running and not probing:
                for unit in state.pending:  # no worker left alive
                    state.errors.setdefault(unit.index, []).append("no live worker left")
                    state.failed.append(
                        {
                            "unit": unit.label,
                            "prompt_ids": [p["id"] for p in unit.prompts][:8],
                            "errors": state.errors[unit.index],
                        }
                    )
                state.pending.clear()
                break
            ready, _ = ray.wait(list(running) + list(probing), num_returns=1, timeout=1.0)
            for ref in ready:
                if ref in probing:  # a worker that died: back (restarted, pair loaded again) or gone
                    worker, since = probing.pop(ref)
                    try:
                        info = ray.get(ref)
                        if not info.get("error") and info.get("fingerprint") == fingerprint:
                            idle.append(worker)
                    except ActorDiedError:
                        pass
                    except RayActorError:  # still restarting
                        if time.time() - since < PROBE_SECONDS:
                            time.sleep(0.5)
                            probing[handles[worker].describe.remote()] = (worker, since)
                    continue
                worker, unit = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as exc:  # the worker process died under this unit
                    fail(unit, worker, f"worker died ({type(exc).__name__})")
                    probing[handles[worker].describe.remote()] = (worker, time.time())
                    continue
                except Exception as exc:  # noqa: BLE001 - the unit raised; the worker lives on
                    cause = getattr(exc, "cause", None) or exc
                    if isinstance(cause, WorkerUnfit):
                        state.pending.insert(0, unit)  # not the unit's fault; this worker is out
                        continue
                    fail(unit, worker, first_line(cause))
                    idle.append(worker)
                    continue
                attempts = len(state.errors.get(unit.index, [])) + 1
                journal.record_done(unit, result["rows"], result["where"], attempts, result["seconds"])
                state.rows[unit.index] = result["rows"]
                idle.append(worker)
                bar.update()
    except KeyboardInterrupt:
        return state, True
    return state, False


def run_cluster(args, plan, units: list, worker_cls: type = BenchWorker):
    """The bench's `--ray` path: the same units as a local run, on the cluster's workers. `worker_cls`: a
    BenchWorker subclass (the tests inject faults with one)."""

    check_journal(args.out, plan, units)  # a journal of another command is refused before Ray starts
    target = RayTarget.parse(args.ray)
    try:
        owned = connect(target)
    except ImportError:
        raise ValueError("--ray needs Ray: pip install -r requirements-cluster.txt (docs/cluster.md)") from None
    except (ConnectionError, RuntimeError) as exc:
        raise ValueError(
            f"cannot reach the Ray cluster at {args.ray}: {first_line(exc)}. A cluster with token "
            f"authentication (Ray's default) needs RAY_AUTH_MODE=token here and its token in "
            f"RAY_AUTH_TOKEN or ~/.ray/auth_token (docs/cluster.md)"
        ) from None
    import ray  # Ray: cluster runs only

    handles: dict[str, Any] = {}
    journal = None
    try:
        spec = load_spec(args.target, args.draft, args.dtype)
        code = code_digest()
        check_nodes(spec, code)
        slots = plan_slots(ray.nodes(), args.device, args.worker_cpus, target.local_workers)
        handles, infos = start_workers(slots, spec, plan, code, worker_cls, quiet=args.quiet)
        fingerprint = agree(infos)
        fit = [i["worker"] for i in infos if not i.get("error")]
        journal = open_journal(args.out, plan, units, fingerprint)
        found = journal.done_rows()
        pending = [u for u in units if journal.key(u) not in found]
        bar = tqdm(
            total=len(pending),
            desc=f"bench on {len(fit)} Ray workers",
            unit="unit",
            file=sys.stderr,
            disable=args.quiet,
        )
        state, interrupted = dispatch(handles, fit, pending, journal, bar, fingerprint)
        bar.close()
        rows = {u.index: found[journal.key(u)] for u in units if journal.key(u) in found}
        resumed = len(rows)
        rows.update(state.rows)
        devices = sorted({i["device"] for i in infos if not i.get("error")})
        on = PairInfo(
            device=f"{len(fit)} Ray workers ({', '.join(devices)})",
            dtype=next(i["dtype"] for i in infos if not i.get("error")),
            target_name=args.target,
            draft_name=args.draft,
        )
        return Outcome(
            rows=[r for i in sorted(rows) for r in rows[i]],
            units=len(units),
            done=len(rows),
            resumed=resumed,
            measured_on=on,
            failed=state.failed,
            interrupted=interrupted,
            workers=infos,
        )
    finally:
        if journal is not None:
            journal.close()
        for handle in handles.values():
            try:
                ray.kill(handle)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if owned:
            ray.shutdown()
