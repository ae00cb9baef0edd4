"""Was a timed run alone on the machine? What else took the CPU while it ran, read from the kernel's counters.

A run's wall time is this machine's only if nothing else wanted its cores meanwhile: the app's start-up, a page
loading in a browser on the same machine or another program can make a run several times slower (a warm-up run
measured while the server started showed 0.18x where the engine makes 1.69x). So every timed run takes two
readings, before and after, and keeps what happened between them (`Disturbance`, stored in `Trace.disturbance`).

The figure, `others_share`: the share of the machine's CPU time, during the run, spent by other processes:

    others_share = (busy - own) / total

- `busy`: the ticks that the CPUs this process may run on (`os.sched_getaffinity`) spent working, from
  `/proc/stat` (user + nice + system + irq + softirq + steal: every kind but idle and iowait; steal is a
  hypervisor giving the CPU to another machine, which takes it from the run as surely as a local process);
- `own`: this process's own CPU time over the run (`time.process_time`: every thread, user and system);
- `total`: the same CPUs' ticks of every kind, idle included: about cpus x wall time.

A run is DISTURBED when other processes used more than `DISTURBED_CORES` (0.1) of a core on average, that is
`others_share` above 0.1 / cpus (0.05 on this 2-core machine), and at least `MIN_OTHERS_CPU_S` (50 ms) of CPU.
Why per core and not a share of the machine: the engine runs PyTorch's intra-op team, one thread per core, which
meets at a barrier after every operation, so the whole team waits for its slowest thread. Others' CPU time spread
over all cores costs a run about 1 / (1 - s); concentrated on one of n cores it costs up to 1 / (1 - n s). A tenth
of a core keeps that under 11 %, the 10 % within which the page's figures are expected to agree with
`specviz.run`'s in a quiet process (scripts/app_timing.py). Measured: the app's first Run, with a browser loading the
page on the same 2 cores, showed 1.02x where `specviz.run` made 1.39x (0.73 of it) while others used 10 % of the
machine, the first version's threshold: a share of the machine let that run pass as "alone". Why 50 ms:
`/proc/stat` counts sampled ticks (1/100 s per CPU), so over a short run the others' time is uncertain by a few
ticks; under 5 ticks it is rounding.

`SPECVIZ_DISTURBED_SHARE` sets another threshold (read at each run): 1 calls no run disturbed, for a machine whose
background load is known and accepted, or a test server whose timings nobody reads.

Where `/proc/stat` cannot be read (macOS, Windows, a sandbox), the figure is None: "unknown", never an error,
and such a run is not called disturbed (nothing says it was). Not seen: a container's CPU quota (cgroup cpu.max),
which slows a run without other processes on its CPUs; and on a GPU the figure speaks of the CPU side only.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

STAT_PATH = "/proc/stat"
DISTURBED_CORES = 0.10  # others' average CPU use, in cores, above which a run is disturbed (see above)
SHARE_ENV = "SPECVIZ_DISTURBED_SHARE"  # another threshold, 0..1 (1: no run is disturbed)
MIN_OTHERS_CPU_S = 0.05  # and other processes used at least this much CPU, seconds (5 ticks of /proc/stat)
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # of a cpuN line: user nice system [idle iowait] irq softirq steal
TOTAL_FIELDS = 8  # user .. steal (guest and guest_nice are already counted in user and nice)


@dataclass(frozen=True)
class Reading:
    """One look at the clocks; two of them bound a run."""

    wall_s: float  # time.perf_counter(), seconds
    own_cpu_s: float  # time.process_time(): this process's CPU seconds so far, every thread
    busy_ticks: int | None  # the allowed CPUs' working ticks since boot (/proc/stat); None: unreadable
    total_ticks: int | None  # the same CPUs' ticks of every kind, idle included; None: unreadable
    cpus: int  # CPUs this process may run on
    hz: int = 100  # ticks per second (SC_CLK_TCK)


def allowed_cpus() -> set[int] | None:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity
        return None


def cpu_ticks(text: str, cpus: set[int] | None) -> tuple[int, int] | None:
    """(busy, total) ticks of `cpus` from /proc/stat's text: the `cpuN` lines of those CPUs, or the `cpu` line of
    all of them where no per-CPU line matches (None: not /proc/stat's format)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("cpu")]
    chosen = [p for p in lines if p[0] != "cpu" and p[0][3:].isdigit() and (cpus is None or int(p[0][3:]) in cpus)]
    if not chosen:
        chosen = [p for p in lines if p[0] == "cpu"]
    try:
        counts = [[int(x) for x in p[1 : 1 + TOTAL_FIELDS]] for p in chosen]
    except ValueError:
        return None
    if not counts or any(len(c) < 4 for c in counts):
        return None
    busy = sum(c[i] for c in counts for i in BUSY_FIELDS if i < len(c))
    return busy, sum(sum(c) for c in counts)


def read(stat_path: str = STAT_PATH) -> Reading:
    """The clocks now. Never raises: an unreadable /proc/stat leaves the ticks None."""
    cpus = allowed_cpus()
    ticks = None
    try:
        with open(stat_path, encoding="ascii", errors="replace") as f:
            ticks = cpu_ticks(f.read(), cpus)
    except OSError:
        pass
    try:
        hz = int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        hz = 100
    return Reading(
        wall_s=time.perf_counter(),
        own_cpu_s=time.process_time(),
        busy_ticks=ticks[0] if ticks else None,
        total_ticks=ticks[1] if ticks else None,
        cpus=len(cpus) if cpus else (os.cpu_count() or 1),
        hz=hz,
    )


@dataclass(frozen=True)
class Disturbance:
    """What else took the CPU between two readings (a run's start and end). JSON-able through `to_dict`."""

    others_share: float | None  # share of the machine's CPU time spent by other processes (0..1); None: unknown
    others_cpu_s: float | None  # CPU seconds other processes used meanwhile; None: unknown
    busy_share: float | None  # share of the machine's CPU time spent by anyone, this process included; None: unknown
    own_cpu_s: float  # this process's CPU seconds meanwhile (every thread)
    wall_s: float  # seconds between the readings
    cpus: int  # CPUs this process may run on (the machine, for these figures)
    disturbed: bool  # others_share > threshold and others_cpu_s >= MIN_OTHERS_CPU_S, decided when measured
    threshold: float = DISTURBED_CORES  # the share of the machine it was decided with (DISTURBED_CORES / cpus)

    @property
    def known(self) -> bool:
        return self.others_share is not None

    @property
    def own_cpu_per_wall(self) -> float | None:
        """The run's own CPU time against its wall time: cores it kept busy on average (None: no wall time)."""
        return self.own_cpu_s / self.wall_s if self.wall_s > 0 else None

    def words(self) -> str:
        """'other processes used 62 % of the CPU' (or 'other processes' use of the CPU unknown')."""
        if self.others_share is None:
            return "other processes' use of the CPU unknown"
        return f"other processes used {percent(self.others_share)} of the CPU"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "Disturbance | None":
        """The record a trace keeps (None where it keeps none, or keeps something else)."""
        if not isinstance(d, dict):
            return None
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError:
            return None


def percent(share: float) -> str:
    """0.62 -> '62 %'; a share under 1 % but above 0 -> '<1 %'."""
    return "<1 %" if 0 < share < 0.005 else f"{share * 100:.0f} %"


def disturbed_share(cpus: int = 1) -> float:
    """The threshold in force, as a share of the machine's CPU time: SPECVIZ_DISTURBED_SHARE where set, else
    DISTURBED_CORES / cpus."""
    text = os.environ.get(SHARE_ENV, "").strip()
    if not text:
        return DISTURBED_CORES / max(1, cpus)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{SHARE_ENV} must be a share between 0 and 1, got {text!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{SHARE_ENV} must be a share between 0 and 1, got {text!r}")
    return value


def is_disturbed(others_share: float | None, others_cpu_s: float | None, threshold: float) -> bool:
    """The rule (module docstring): more than `threshold` of the machine's CPU time, and at least
    MIN_OTHERS_CPU_S seconds of it, went to other processes. Unknown figures are no disturbance."""
    if others_share is None or others_cpu_s is None:
        return False
    return others_share > threshold and others_cpu_s >= MIN_OTHERS_CPU_S


def between(start: Reading, end: Reading, threshold: float | None = None) -> Disturbance:
    """What happened between two readings (pure but for the threshold: `disturbed_share(cpus)` where None)."""
    threshold = disturbed_share(end.cpus) if threshold is None else threshold
    wall = max(0.0, end.wall_s - start.wall_s)
    own = max(0.0, end.own_cpu_s - start.own_cpu_s)
    share = others_s = busy_share = None
    if None not in (start.busy_ticks, start.total_ticks, end.busy_ticks, end.total_ticks):
        total_s = (end.total_ticks - start.total_ticks) / end.hz
        busy_s = (end.busy_ticks - start.busy_ticks) / end.hz
        if total_s > 0:
            others_s = max(0.0, busy_s - own)  # ticks are sampled: a quiet run's own time may exceed its busy ticks
            share = min(1.0, others_s / total_s)
            busy_share = min(1.0, max(0.0, busy_s) / total_s)
    return Disturbance(
        others_share=None if share is None else round(share, 4),
        others_cpu_s=None if others_s is None else round(others_s, 4),
        busy_share=None if busy_share is None else round(busy_share, 4),
        own_cpu_s=round(own, 4),
        wall_s=round(wall, 4),
        cpus=end.cpus,
        disturbed=is_disturbed(share, others_s, threshold),
        threshold=threshold,
    )


def since(start: Reading, threshold: float | None = None) -> Disturbance:
    """What happened from `start` until now."""
    return between(start, read(), threshold)
