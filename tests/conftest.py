"""Shared helpers: run the `launch` command as a user would, and read what it left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "jobs" / "probe.py"


# The signals a user sends a launcher: Ctrl-C, the terminal closed, kill, quit.
USER_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGQUIT)


def signals_as_in_a_terminal() -> None:
    """A child's signal disposition, stated rather than inherited (a Popen `preexec_fn`): the user
    signals at their defaults and none blocked, as a command typed at a terminal starts. A test run
    started as a background job (`&` ignores SIGINT) or under nohup (SIGHUP) would otherwise hand
    its ignored signals on, and a launcher keeps ignored what it was started ignoring."""
    for sig in USER_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


SPAWNED: list[subprocess.Popen] = []  # by the test that runs now: what it left running is stopped after it


def spawn(argv: list[str], **popen) -> subprocess.Popen:
    """Popen of `argv` with the signal disposition of a terminal's command; every process a test
    signals is started here (or by `launch`/`start_launcher`, which use it)."""
    proc = subprocess.Popen(argv, preexec_fn=signals_as_in_a_terminal, **popen)
    SPAWNED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _stop_what_the_test_left_running():
    """A test that fails half-way leaves its launcher running (and holding ports, hosts, containers):
    SIGTERM stops it and its nodes as a user's would be stopped, SIGKILL after a minute."""
    yield
    left = [proc for proc in SPAWNED if proc.poll() is None]
    SPAWNED.clear()
    for proc in left:
        proc.terminate()
    for proc in left:
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def launch(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """`launch ARGS...` in `cwd`, output captured as text."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args], preexec_fn=signals_as_in_a_terminal,
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def start_launcher(job: Path, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`launch JOB EXTRA...` in the background, its output merged on a text pipe."""
    return spawn([sys.executable, "-m", "launcher", str(job), *extra], cwd=cwd, env=dict(os.environ, **(env or {})),
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(proc: subprocess.Popen, done, limit_s: float = 120) -> list[str]:
    """The launcher's lines until `done(lines)` holds."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + limit_s
    for line in proc.stdout:
        seen.append(line)
        if done(seen) or time.monotonic() > deadline:
            break
    return seen


def run_id_of(output: str) -> str:
    match = re.search(r"^launch: run (\S+) on", output, re.M)
    assert match, f"no run id in output:\n{output}"
    return match.group(1)


def assert_secret_nowhere(secret: str, output: str, root: Path) -> None:
    """The secret's value is in no output and no file under `root`."""
    assert secret not in output
    for path in root.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.fixture
def probe_job(tmp_path: Path):
    """Write a job.yaml running tests/jobs/probe.py with `args`, on a one-host local inventory."""

    def make(args: list[str], nproc: int = 2, extra: str = "", gate: Path | None = None) -> Path:
        shutil.copy(PROBE, tmp_path / "probe.py")
        (tmp_path / "cluster.yaml").write_text("hosts:\n  - name: box\n    address: local\n")
        command = json.dumps(gated(["python", "probe.py", *args], gate))
        (tmp_path / "job.yaml").write_text(
            f"name: probe\nnproc_per_node: {nproc}\nruntime: host\ncommand: {command}\n{extra}"
        )
        return tmp_path / "job.yaml"

    return make


def gated(command: list[str], gate: Path | str | None) -> list[str]:
    """`command`, started only once the file `gate` exists where the rank runs (None: at once). A
    test opens the gate after it has seen what it must see while the run certainly goes on."""
    if gate is None:
        return command
    return ["sh", "-c", 'while [ ! -e "$0" ]; do sleep 0.1; done; exec "$@"', str(gate), *command]


def lab_job(tmp_path: Path, lab, base_image: str, script: Path, args: list[str], extra: str = "", gate: str | None = None) -> Path:
    """A docker job for the lab's three hosts, one process each, running `script` with `args`
    (once `gate`, a path in each container, exists)."""
    workdir = tmp_path / "job"
    workdir.mkdir(exist_ok=True)
    shutil.copy(script, workdir / script.name)
    command = json.dumps(gated(["python", script.name, *args], gate))
    (workdir / "job.yaml").write_text(
        f"name: lab-{script.stem}\ncluster: {lab.cluster_file}\nnproc_per_node: 1\nbackend: gloo\n"
        f"command: {command}\nenv: {{OMP_NUM_THREADS: '1'}}\nimage: {{base: '{base_image}'}}\n"
        f"runtime: docker\ntimeout: 4m\n{extra}"
    )
    return workdir / "job.yaml"


def containers(lab) -> dict[str, list[str]]:
    """Each host's containers of any run, asked of its engine directly (not over SSH, which a fault may cut)."""
    return {h.name: lab.docker(h.name, "ps", "-aq", "--filter", "label=launch.run_id").stdout.decode().split() for h in lab.hosts}


def host_runtime_job(tmp_path: Path, lab, script: Path, args: list[str]) -> Path:
    """runtime: host on the lab: the hosts run this machine's Python (shared, as labs share a toolchain)."""
    # no `nic`: the launcher finds the interface that reaches the first host
    cluster = lab.cluster_file.read_text().replace("    nic: eth0\n", f"    python: {sys.executable}\n")
    (tmp_path / "cluster.yaml").write_text(cluster)
    job = lab_job(tmp_path, lab, "unused", script, args)
    job.write_text(job.read_text().replace("runtime: docker", "runtime: host").replace(f"cluster: {lab.cluster_file}", f"cluster: {tmp_path / 'cluster.yaml'}"))
    return job


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)  # stable: the order is kept otherwise


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI nothing may be skipped: a skip there hides a missing piece of the set-up."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; every test must run in CI", red=True)
        session.exitstatus = 1


LAB_TOOLS = ("dockerd", "sshd", "ssh", "ssh-keygen", "ip", "nsenter", "unshare", "docker")


def lab_missing() -> str | None:
    """Why the simulated lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the simulated lab needs root"
    missing = [tool for tool in LAB_TOOLS if not shutil.which(tool) and not Path("/usr/sbin", tool).exists()]
    if missing:
        return f"the simulated lab needs {', '.join(missing)}; scripts/test.sh installs them"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "this machine's dockerd is not running; scripts/test.sh starts it"
    return None


def build_base(requirements: str | None = None, repo: str | None = None) -> str:
    """images/build-cpu-base.sh (cached, rebuilt when its inputs change); the image's tag."""
    reason = lab_missing()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ)
    if requirements:
        env.update(REQUIREMENTS=str(ROOT / requirements), REPO=repo or "launch-lab-base")
    result = subprocess.run([str(ROOT / "images/build-cpu-base.sh")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def base_image() -> str:
    """The lab's base image: Python and PyTorch for CPUs (tests/lab-base), in every lab host."""
    return build_base("tests/lab-base/requirements.txt", "launch-lab-base")


@pytest.fixture(scope="session")
def cpu_base_image() -> str:
    """The project's CPU base image (images/cpu): PyTorch and torchvision, ~6 GB."""
    return build_base()


def lab_names(spare: bool = False) -> tuple[str, int]:
    """The prefix and subnet of the session's lab, or of the spare one a test brings up and down itself.
    LAUNCH_LAB_PREFIX and LAUNCH_LAB_SUBNET let a second checkout's tests run beside labs in use."""
    prefix, subnet = os.environ.get("LAUNCH_LAB_PREFIX"), os.environ.get("LAUNCH_LAB_SUBNET")
    if not spare:
        return prefix or "llab", int(subnet or 7)
    return (f"{prefix}t" if prefix else "ltest"), (int(subnet) + 128) % 256 if subnet else 8


@pytest.fixture(scope="session")
def lab(base_image: str):
    """Three SSH hosts with their own Docker engines, the base image in each; torn down at the end."""
    import simlab

    prefix, subnet = lab_names()
    sim = simlab.Lab(hosts=3, prefix=prefix, subnet=subnet).up()
    try:
        sim.ensure_image(base_image)
        yield sim
    finally:
        sim.down()
    left = simlab.leftovers(sim.prefix)
    assert not any(left.values()), f"the lab left {left}"


@pytest.fixture(scope="session")
def slurm(lab):
    """A Slurm cluster on the session's lab (tests/simslurm.py): slurmctld on the machine, a slurmd on
    h1..h3, partition `lab`; SLURM_CONF is set in os.environ meanwhile. Torn down at the end."""
    import simslurm

    missing = [tool for tool in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(tool)
               and not Path("/usr/sbin", tool).exists()]
    if missing:
        pytest.skip(f"the lab's Slurm cluster needs {', '.join(missing)}; scripts/setup-lab.sh installs them")
    cluster = simslurm.SlurmCluster(lab)
    before = {key: os.environ.get(key) for key in cluster.env}
    cluster.up()
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.down()
    left = cluster.leftovers()
    assert not any(left.values()), f"the Slurm cluster left {left}"
