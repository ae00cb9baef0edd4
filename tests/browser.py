"""The browser the real-browser tests drive, found wherever it is, or got, or one line that gets it.

Where: Debian's chromium (what .ci/run installs), any `chromium` on PATH, or the build
`python -m playwright install chromium` fetched. Where none is: as root on Debian, apt installs chromium;
elsewhere playwright fetches its own; when that fails too, the run stops at once with the one command to run.
Never a skip: CI fails without a browser. The same for axe-core (the accessibility test): `npm ci` when npm
exists, else the command.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"]
AXE_DIR = ROOT / "tests" / "a11y"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_INSTALL = "npm ci --prefix tests/a11y"


def playwright_chromium() -> str | None:
    """The chromium build `python -m playwright install chromium` put in playwright's cache, if any."""
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            path = p.chromium.executable_path
    except Exception:  # noqa: BLE001 - no driver, no build: not found
        return None
    return path if path and Path(path).exists() else None


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return playwright_chromium()


def install_command() -> str:
    on_debian = Path("/etc/debian_version").exists() and shutil.which("apt-get")
    if on_debian and hasattr(os, "geteuid") and os.geteuid() == 0:
        return "apt-get update && apt-get install -y chromium"
    return f"{sys.executable} -m playwright install chromium"


def chromium() -> str:
    """A chromium to launch, installed on the way if needed; stops the whole run with the command otherwise."""
    found = find_chromium()
    if found:
        return found
    command = install_command()
    print(f"\nno chromium found: running `{command}`", file=sys.stderr)
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    found = find_chromium()
    if done.returncode != 0 or not found:
        pytest.exit(
            f"no browser for the browser tests; install one with: {command}\n{done.stderr[-500:]}", returncode=1
        )
    return found


def axe_script() -> Path:
    """axe-core's browser bundle (tests/a11y, pinned), installed with npm if missing."""
    if not AXE.exists() and shutil.which("npm"):
        subprocess.run(AXE_INSTALL.split() + ["--no-audit", "--no-fund"], cwd=ROOT, capture_output=True, text=True)
    if not AXE.exists():
        pytest.exit(
            f"{AXE.relative_to(ROOT)} missing: install axe-core with `{AXE_INSTALL}` (from the repository root)",
            returncode=1,
        )
    return AXE


def launch(p):
    """Headless chromium for the tests (playwright's `p`), offline-friendly flags."""
    return p.chromium.launch(executable_path=chromium(), headless=True, args=ARGS)


@contextlib.contextmanager
def launched():
    """A launched browser for a test module's fixture."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch(p)
        yield browser
        browser.close()


AXE_RUN = """async () => {
  const r = await axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa"]}, \
resultTypes: ["violations"]});
  return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                 nodes: v.nodes.map(n => ({target: n.target.join(" "), summary: n.failureSummary}))}));
}"""


def axe_violations(page) -> list[dict]:
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    return page.evaluate(AXE_RUN)


def describe(violations: list[dict]) -> str:
    return "; ".join(
        f"{v['id']} ({v['impact']}, {len(v['nodes'])} node(s): " + ", ".join(n["target"] for n in v["nodes"][:3]) + ")"
        for v in violations
    )
