"""Run docker-py's own integration files against a fresh shoal daemon, and report per file.

Not part of the suite (CI cannot download docker-py's repository): a measurement tool.

    .venv/bin/python -m tests.compat.docker_py_suite DOCKER_PY_CHECKOUT [FILE ...] [-- PYTEST_ARGS]

DOCKER_PY_CHECKOUT is a checkout (or bare mirror: its HEAD's `tests/` is exported) of
github.com/docker/docker-py. A lab of one host, not in a swarm (docker-py's swarm tests form and
leave their own), gets the busybox test image tagged as docker-py's test images (`alpine:3.10`,
`alpine`: busybox has the commands its tests run) and as `busybox`, and runs docker-py's pytest
inside the host's network namespace, with DOCKER_HOST at its daemon (so its
`init_swarm('127.0.0.1', '0.0.0.0:PORT')` stays in that namespace). docker-py's helpers import
paramiko for its ssh tests only; a stub stands in when paramiko is not installed. Prints each
file's passed/failed/skipped counts and each failure's first line, and leaves a JUnit XML and
pytest's output per file in the work directory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from cli.lab import Lab
from tests.swarm.helpers import load_busybox_everywhere

DEFAULT_FILES = ["api_container_test.py", "api_exec_test.py", "api_service_test.py", "api_secret_test.py",
                 "api_config_test.py", "api_network_test.py", "models_containers_test.py"]
TEST_IMAGES = ("alpine:3.10", "alpine:latest", "busybox:latest")   # its test images (busybox: the service tests)
PARAMIKO_STUB = "# stand-in: docker-py's ssh tests are not run here\nclass SSHClient: ...\nclass Channel: ...\n"


def export_tests(checkout: Path, into: Path) -> Path:
    """docker-py's `tests/` package under `into` (from a work tree, or a bare repository's HEAD)."""
    if (checkout / "tests" / "integration").is_dir():
        subprocess.run(["cp", "-r", str(checkout / "tests"), str(into)], check=True)
    else:
        git_dir = checkout if (checkout / "HEAD").exists() else checkout / ".git"
        archive = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "HEAD", "tests"],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "tests" / "integration"


def summarise(xml_path: Path) -> tuple[dict[str, int], list[str]]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    if not xml_path.exists():
        return counts, ["no report (pytest did not run)"]
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}.{case.get('name')}"
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failed is not None:
            counts["failed"] += 1
            message = (failed.get("message") or failed.text or "").strip().splitlines()
            failures.append(f"{name}: {message[0][:200] if message else '?'}")
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts, failures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path)
    parser.add_argument("files", nargs="*", default=DEFAULT_FILES)
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per file")
    args, pytest_args = parser.parse_known_args(argv)
    work = Path(tempfile.mkdtemp(prefix="docker-py-suite-"))
    integration = export_tests(args.checkout.resolve(), work)
    stubs = work / "stubs"
    stubs.mkdir()
    try:
        import paramiko  # noqa: F401
    except ImportError:
        (stubs / "paramiko.py").write_text(PARAMIKO_STUB)
    lab = Lab(f"dpy{os.getpid() % 100000:05d}")
    lab.down()
    total = 0
    try:
        lab.up(managers=1, workers=0, swarm=False)
        for tag in TEST_IMAGES:
            load_busybox_everywhere(lab, work, tag)
        for name in args.files:
            report = work / f"{name}.xml"
            cmd = lab.exec_argv("manager-1", [
                "env", f"PYTHONPATH={stubs}:{work}", sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                "-q", "--rootdir", str(work), f"--junitxml={report}", *pytest_args, str(integration / name)])
            try:
                with open(work / f"{name}.log", "wb") as out:
                    subprocess.run(cmd, cwd=work, timeout=args.timeout, stdout=out, stderr=subprocess.STDOUT)
            except subprocess.TimeoutExpired:
                print(f"{name}: timed out after {args.timeout:.0f}s")
            counts, failures = summarise(report)
            total += counts["failed"]
            print(f"{name}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
            for line in failures:
                print(f"    FAIL {line}")
            sys.stdout.flush()
    finally:
        lab.down()
    print(f"reports in {work}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
