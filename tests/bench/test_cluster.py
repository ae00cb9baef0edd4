"""The bench on Ray (`--ray`), on tiny models and the bundled prompts: the same outputs as the local bench,
a killed worker loses no unit, an interrupted run resumes to the same result, another command is refused,
an unfit worker takes no units and a unit that fails twice is reported. Correctness only: the workers share
this machine's cores, so no timing is checked.

Ray comes from requirements-cluster.txt; without it these tests fail (no skip). CI starts a loopback Ray
instance of two CPUs and exports RAY_ADDRESS; without one, this module starts its own (loopback only).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cluster_faults
import pandas as pd
import pytest
from conftest import make_tiny_pair

from specviz.bench import cli as bench
from specviz.bench import cluster, journal, matrix
from specviz.bench.cluster import LOOPBACK_ENV

pytestmark = pytest.mark.slow  # a real Ray instance: about 2 minutes

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "assets" / "prompts" / "code.jsonl"
STABLE = [
    "method",
    "prompt_id",
    "category",
    "new_tokens",
    "alpha",
    "tau",
    "equal_to_autoregressive",
    "output_digest",
    "tie_divergences",
    "real_divergences",
    "early_exits",
    "wasted_drafts",
    "rows",
    "rounds",
    "realigned_rounds",
    "share_equal_rows",
]


@pytest.fixture(scope="module")
def address():
    """This module's connection to a Ray instance: CI's (RAY_ADDRESS) or one of its own, shut down after.
    Ray is imported here, not at collection, so the rest of the suite never loads it."""
    for key, value in LOOPBACK_ENV.items():  # before Ray is imported: a local instance stays on 127.0.0.1
        os.environ.setdefault(key, value)
    import ray  # fails (never skips) without requirements-cluster.txt

    given = os.environ.get("RAY_ADDRESS")
    if given:
        ray.init(address=given, log_to_driver=False)
    else:
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(cluster_faults)  # the workers cannot import the tests' folder
    assert ray.cluster_resources().get("CPU", 0) >= 2, "the cluster tests need two CPUs"
    yield given or ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def saved_pair(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    make_tiny_pair("llama", tiny_tokenizer, save_dir=root)
    return root


def command(pair: Path, out: Path, *extra: str, tokens: int = 8) -> list[str]:
    return [
        "--methods",
        "draft_model,draft_model:gamma=2,eqspec",
        "--batch-size",
        "4",
        "--prompts",
        str(BUNDLED),
        "--max-new-tokens",
        str(tokens),
        "--repeats",
        "2",
        "--target",
        str(pair / "target"),
        "--draft",
        str(pair / "draft"),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def local_run(saved_pair, tmp_path_factory):
    """The same command on this process, without Ray: the reference."""
    out = tmp_path_factory.mktemp("local") / "local.csv"
    assert bench.main(command(saved_pair, out)) == 0
    return pd.read_csv(out)


def stable(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in STABLE if c in df]].reset_index(drop=True)


def on_ray(address: str) -> list[str]:
    return ["--ray", address, "--worker-cpus", "1"]  # two one-core workers on the two-CPU instance


def spawn(argv: list[str]) -> subprocess.Popen:
    """A bench driver of its own (a separate Ray driver), its output in a pipe. Ctrl-C is restored to its default
    in it: a test run started as a background job of a shell without job control inherits SIGINT ignored, and
    Python then never raises KeyboardInterrupt (seen in a `(bash .ci/run &)` run: the driver finished every unit)."""
    return subprocess.Popen(
        [sys.executable, "-m", "specviz.bench", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def done_records(out: Path) -> list[dict]:
    path = journal.journal_path(out)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines()[1:]:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in records if r.get("status") == "done"]


def wait_for(out: Path, count: int, proc: subprocess.Popen, seconds: float = 180) -> list[dict]:
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = done_records(out)
        if len(found) >= count:
            return found
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} units finished in {seconds} s")


def test_ray_local_workers_give_the_local_outputs(address, saved_pair, local_run, tmp_path):
    out = tmp_path / "ray.csv"
    code = bench.main(
        command(
            saved_pair, out, *on_ray(address), "--json", str(tmp_path / "s.json"), "--html", str(tmp_path / "r.html")
        )
    )
    assert code == 0
    df = pd.read_csv(out)
    assert df.equal_to_autoregressive.all() and df.real_divergences.eq(0).all()
    pd.testing.assert_frame_equal(stable(df), stable(local_run))  # every row: same outputs, same order
    assert set(df.worker) == {"w0", "w1"} and df.host.notna().all() and set(df.device) == {"cpu"}
    assert list(df.columns) == list(local_run.columns)
    record = json.loads((tmp_path / "s.json").read_text())
    assert {r["worker"] for r in record["by_device"]} == {"w0", "w1"} and len(record["workers"]) == 2
    assert record["rows"]["draft_model"]["share_equal"] == 1.0
    assert "Per device" in (tmp_path / "r.html").read_text()
    units = done_records(out)
    assert len(units) == 17 and len({r["unit"] for r in units}) == 17  # 16 prompts + the batch unit, once each


def test_a_killed_worker_loses_no_unit(address, saved_pair, local_run, tmp_path):
    out = tmp_path / "kill.csv"
    proc = spawn(command(saved_pair, out, *on_ray(address)))
    first = wait_for(out, 1, proc)[0]
    time.sleep(0.1)  # the worker has its next unit by now
    os.kill(first["where"]["pid"], signal.SIGKILL)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    df = pd.read_csv(out)
    assert not df.duplicated(["method", "prompt_id"]).any()
    pd.testing.assert_frame_equal(stable(df), stable(local_run))
    units = done_records(out)
    assert len({r["unit"] for r in units}) == len(units) == 17  # every unit exactly once
    assert any(r["attempts"] == 2 for r in units), "the killed worker's unit was not retried"


def test_interrupted_run_resumes_and_another_command_is_refused(address, saved_pair, local_run, tmp_path):
    out = tmp_path / "resume.csv"
    argv = command(saved_pair, out, *on_ray(address))
    proc = spawn(argv)
    wait_for(out, 3, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, log
    partial = pd.read_csv(out)  # a valid result of what finished
    finished = len(done_records(out))
    assert 3 <= finished < 17 and "interrupted" in log
    assert partial[partial.category != "batch"].groupby("prompt_id").size().eq(3).all()  # whole units only

    again = subprocess.run(
        [sys.executable, "-m", "specviz.bench", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{finished} of 17 units came from the journal" in again.stdout
    units = done_records(out)
    assert len(units) == 17 and len({r["unit"] for r in units}) == 17  # no unit ran twice
    pd.testing.assert_frame_equal(stable(pd.read_csv(out)), stable(local_run))

    changed = command(saved_pair, out, *on_ray(address), tokens=9)
    other = subprocess.run(
        [sys.executable, "-m", "specviz.bench", *changed], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert other.returncode == 2 and "written by a different command" in other.stderr
    assert "max_new_tokens: 8 there, 9 here" in other.stderr


def test_unfit_worker_takes_no_units_and_a_unit_failing_twice_is_reported(address, saved_pair, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        "".join(json.dumps({"id": i, "prompt": f"def {i}(x):"}) + "\n" for i in ("a", cluster_faults.BOOM, "c"))
    )
    out = tmp_path / "faults.csv"
    argv = [
        "--methods",
        "draft_model",
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "6",
        "--repeats",
        "1",
        "--target",
        str(saved_pair / "target"),
        "--draft",
        str(saved_pair / "draft"),
        "--out",
        str(out),
        "--quiet",
        "--json",
        str(tmp_path / "s.json"),
        *on_ray(address),
    ]
    args = bench.build_parser().parse_args(argv)
    methods, loaded = bench.prepare(args)
    plan = matrix.make_plan(methods, args.repeats)
    units = matrix.make_units(plan, loaded)
    outcome = cluster.run_cluster(args, plan, units, worker_cls=cluster_faults.FaultyWorker)
    assert bench.write_outputs(args, outcome, "test", len(loaded), 1, 0.0) == 1  # failures: non-zero exit
    df = pd.read_csv(out)
    assert set(df.prompt_id) == {"a", "c"} and set(df.worker) == {"w0"}  # w1 failed its self-check
    assert [w["worker"] for w in outcome.workers if w["error"]] == ["w1"]
    assert "SelfCheckFailed" in outcome.workers[1]["error"]
    [failed] = outcome.failed
    assert failed["prompt_ids"] == [cluster_faults.BOOM] and len(failed["errors"]) == 2
    assert "injected unit fault" in failed["errors"][0]
    assert f"FAILED twice, no rows: prompt {cluster_faults.BOOM}" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["incomplete"]["failed"][0]["prompt_ids"] == ["boom"]
    statuses = [json.loads(line).get("status") for line in journal.journal_path(out).read_text().splitlines()[1:]]
    assert sorted(statuses) == ["done", "done", "failed"]


def test_a_local_path_missing_on_a_node_is_named_up_front(address, saved_pair, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "target"
    argv = command(saved_pair, tmp_path / "m.csv", *on_ray(address))
    argv[argv.index("--target") + 1] = str(missing)
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "must exist on every node" in err


def test_ci_starts_a_loopback_ray_instance_for_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    test_line = "pip install -r requirements-dev.txt && python -m pytest -q tests"
    start = ci.index("ray start --head")
    assert ci.index("pip install -r requirements-cluster.txt") < start < ci.index(test_line)
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in ci and "--num-cpus 2" in ci and "ray stop" in ci
    assert "export RAY_ADDRESS=127.0.0.1:" in ci
