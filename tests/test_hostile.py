"""Hostile input through the command line as a user types it: every case ends in one line that names
the file and the key, exit code 2, no traceback, nothing created. Fast: nothing here starts a run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from launcher.cli import main

JOB = "command: [python, train.py]\n"
CLUSTER = "hosts:\n  - {name: a, address: 192.0.2.1}\n"


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_refused(code: int, output: str, pattern: str, folder: Path) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("launch: error: "), output
    assert "Traceback" not in output
    import re

    assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert not (folder / "runs").exists(), "nothing may be created for bad input"


def merge_bomb(levels: int = 8, width: int = 9) -> str:
    lines = ["a0: &a0 {x: 1, y: 2}"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} {{<<: [{refs}]}}")
    return "\n".join(lines) + f"\ncommand: [python, train.py]\nenv: *a{levels - 1}\n"


def list_bomb(levels: int = 9, width: int = 10) -> str:
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\ncommand: [python, train.py]\n"


JOB_CASES = [
    # (id, job.yaml text, pattern of the one line)
    ("merge-key-bomb", merge_bomb(), r"job\.yaml: expands to more than \d+ values"),
    ("alias-list-bomb", list_bomb(), r"job\.yaml: expands to more than \d+ values"),
    ("recursive-alias", "a: &a [*a]\n" + JOB, r"job\.yaml: line 1: an alias refers to the value that holds it"),
    ("deep-nesting", "a: " + "[" * 500 + "]" * 500 + "\n" + JOB, r"job\.yaml: .*nested more than 64 levels"),
    ("deep-mapping", "a: " + "{b: " * 100 + "1" + "}" * 100 + "\n" + JOB, r"job\.yaml: .*nested more than 64 levels"),
    ("nul-in-command", 'command: [python, "train\\0.py"]\n', r"job\.yaml: command\[1\]: holds a NUL byte"),
    ("nul-in-env-value", JOB + 'env: {X: "a\\0b"}\n', r"job\.yaml: env\.X: holds a NUL byte"),
    ("nul-in-env-key", JOB + 'env: {"X\\0": "1"}\n', r"job\.yaml: env\.X\\x00: holds a NUL byte"),
    ("nul-in-workdir", JOB + 'workdir: "a\\0b"\n', r"job\.yaml: workdir: holds a NUL byte"),
    ("nul-in-cluster", JOB + 'cluster: "c\\0.yaml"\n', r"job\.yaml: cluster: holds a NUL byte"),
    ("nproc-billion", JOB + "nproc_per_node: 1000000000\n", r"nproc_per_node: expected an integer from 1 to 1024"),
    ("nproc-negative", JOB + "nproc_per_node: -4\n", r"nproc_per_node: expected an integer from 1 to 1024"),
    ("nproc-bool", JOB + "nproc_per_node: true\n", r"nproc_per_node: expected"),
    ("nproc-huge-float", JOB + "nproc_per_node: 1e400\n", r"nproc_per_node: expected"),
    ("max-restarts-20-digits", JOB + "max_restarts: 12345678901234567890\n", r"max_restarts: expected an integer from 0 to 1000"),
    ("max-restarts-text", JOB + "max_restarts: lots\n", r"max_restarts: expected an integer from 0 to 1000"),
    ("warmup-huge", JOB + "warmup_steps: 99999999999\n", r"warmup_steps: expected an integer from 0 to 1000000"),
    ("timeout-5000-digits", JOB + "timeout: " + "9" * 5000 + "\n", r"job\.yaml: a value YAML cannot hold: .*5000 digits"),
    ("timeout-5000-digit-days", JOB + "timeout: " + "9" * 5000 + "d\n", r"timeout: expected a duration"),
    ("timeout-infinite", JOB + "timeout: .inf\n", r"timeout: expected a duration"),
    ("timeout-nan", JOB + "timeout: .nan\n", r"timeout: expected a duration"),
    ("timeout-negative", JOB + "timeout: -5\n", r"timeout: expected a duration"),
    ("timeout-two-years", JOB + "timeout: 800d\n", r"timeout: expected a duration of at most 366 days"),
    ("timeout-superscript", JOB + "timeout: '²'\n", r"timeout: expected a duration"),
    ("rdzv-port-zero", JOB + "rdzv_port: 0\n", r"rdzv_port: expected an integer from 1 to 65534"),
    ("rdzv-port-high", JOB + "rdzv_port: 65535\n", r"rdzv_port: expected an integer from 1 to 65534"),
    ("env-launch-owned", JOB + "env: {LAUNCH_RUN_ID: x}\n", r"env\.LAUNCH_RUN_ID: names starting with LAUNCH_ are set by the launcher"),
    ("env-rank", JOB + "env: {RANK: '3'}\n", r"env\.RANK: is set for every rank by torchrun or the launcher"),
    ("env-world-size", JOB + "env: {WORLD_SIZE: '8'}\n", r"env\.WORLD_SIZE: is set for every rank"),
    ("env-master-addr", JOB + "env: {MASTER_ADDR: 1.2.3.4}\n", r"env\.MASTER_ADDR: is set for every rank"),
    ("env-gloo-ifname", JOB + "env: {GLOO_SOCKET_IFNAME: eth0}\n", r"env\.GLOO_SOCKET_IFNAME: .*give the host's nic"),
    ("env-name-dash", JOB + "env: {MY-VAR: x}\n", r"env: expected variable names of letters"),
    ("env-value-list", JOB + "env: {X: [1, 2]}\n", r"env\.X: expected a string"),
    ("env-value-float", JOB + "env: {X: 1.5}\n", r"env\.X: expected a string"),
    ("env-not-mapping", JOB + "env: [X=1]\n", r"env: expected a mapping"),
    ("secret-name-bad", JOB + "secrets: ['A B']\n", r"secrets\[0\]: expected an environment variable name"),
    ("secrets-not-list", JOB + "secrets: TOKEN\n", r"secrets: expected a list"),
    ("command-empty", "command: []\n", r"command: expected a non-empty list"),
    ("command-string", "command: python train.py\n", r"command: expected a list"),
    ("command-mapping-item", "command: [python, {a: 1}]\n", r"command\[1\]: expected a string"),
    ("name-slash", JOB + "name: a/b\n", r"name: expected a name of letters"),
    ("name-dotdot", JOB + "name: ../x\n", r"name: expected a name of letters"),
    ("name-newline", JOB + 'name: "a\\nb"\n', r"name: expected a name of letters"),
    ("workdir-missing", JOB + "workdir: nowhere\n", r"workdir: 'nowhere' is not a directory"),
    ("workdir-root", JOB + "workdir: /\n", r"workdir: '/' is the root folder"),
    ("image-base-int", JOB + "image: {base: 3}\n", r"image\.base: expected a string, got 3"),
    ("image-requirements-missing", JOB + "image: {requirements: nope.txt}\n", r"image\.requirements: 'nope\.txt' is not a file"),
    ("image-requirements-dir", JOB + "image: {requirements: .}\n", r"image\.requirements: '\.' is not a file"),
    ("image-requirements-device", JOB + "image: {requirements: /dev/zero}\n", r"image\.requirements: '/dev/zero' is not a file"),
    ("image-unknown-key", JOB + "image: {bsae: x}\n", r"image: unknown key 'bsae'; did you mean 'base'"),
    ("backend-mpi", JOB + "backend: mpi\n", r"backend: expected one of auto \| gloo \| nccl"),
    ("runtime-k8s", JOB + "runtime: k8s\n", r"runtime: expected one of docker \| host"),
    ("scaling-zero", JOB + "scaling: [0]\n", r"scaling\[0\]: expected an integer from 1"),
    ("scaling-huge", JOB + "scaling: [100000]\n", r"scaling\[0\]: expected an integer from 1 to 1024"),
    ("resume-text", JOB + "resume: yes please\n", r"resume: expected true or false"),
    ("duplicate-key", JOB + "command: [python, other.py]\n", r"duplicate key 'command'"),
    ("top-level-list", "- a\n- b\n", r"expected a mapping of settings at the top level"),
    ("top-level-scalar", "just text\n", r"expected a mapping of settings at the top level"),
    ("empty-file", "", r"the file is empty"),
    ("tabs", "command:\n\t- python\n", r"invalid YAML at line 2"),
    ("python-tag", "command: !!python/object/apply:os.system [id]\n", r"invalid YAML"),
    ("unknown-key", JOB + "nproc_per_nod: 2\n", r"unknown key 'nproc_per_nod'; did you mean 'nproc_per_node'"),
    ("key-not-string", JOB + "1: x\n", r"keys must be names, got 1"),
]


@pytest.mark.parametrize("text, pattern", [pytest.param(t, p, id=i) for i, t, p in JOB_CASES])
def test_a_hostile_job_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, pattern: str) -> None:
    (tmp_path / "job.yaml").write_text(text)
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    started = time.monotonic()
    code, output = run_cli(capsys, str(tmp_path / "job.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert time.monotonic() - started < 5, "refusing bad input must not take long"
    assert_refused(code, output, pattern, tmp_path)


CLUSTER_CASES = [
    ("hosts-empty", "hosts: []\n", r"hosts: expected a non-empty list of hosts"),
    ("hosts-mapping", "hosts: {a: 1}\n", r"hosts: expected a non-empty list"),
    ("host-scalar", "hosts: [a]\n", r"hosts\[0\]: expected a mapping"),
    ("address-missing", "hosts:\n  - {name: a}\n", r"hosts\[0\]\.address: missing"),
    ("address-option", "hosts:\n  - {name: a, address: -oProxyCommand=id}\n", r"hosts\[0\]\.address: expected a host name, an IP address"),
    ("address-blank", "hosts:\n  - {name: a, address: 'a b'}\n", r"hosts\[0\]\.address: expected a host name"),
    ("address-semicolon", "hosts:\n  - {name: a, address: 'a;id'}\n", r"hosts\[0\]\.address: expected a host name"),
    ("address-user-at", "hosts:\n  - {name: a, address: 'root@a'}\n", r"hosts\[0\]\.address: expected a host name"),
    ("address-half-bracket", "hosts:\n  - {name: a, address: '[::1'}\n", r"hosts\[0\]\.address: expected a host name"),
    ("address-bracketed-name", "hosts:\n  - {name: a, address: '[box]'}\n", r"hosts\[0\]\.address: expected a host name"),
    ("address-long-label", "hosts:\n  - {name: a, address: " + "x" * 64 + ".lab}\n", r"hosts\[0\]\.address: expected a host name"),
    ("address-dollar", "hosts:\n  - {name: a, address: '$(id)'}\n", r"hosts\[0\]\.address: expected a host name"),
    ("user-traversal", "hosts:\n  - {name: a, address: x, user: x/../../../root/.ssh}\n", r"hosts\[0\]\.user: expected a user name"),
    ("user-option", "hosts:\n  - {name: a, address: x, user: -lroot}\n", r"hosts\[0\]\.user: expected a user name"),
    ("user-blank", "hosts:\n  - {name: a, address: x, user: 'a b'}\n", r"hosts\[0\]\.user: expected a user name"),
    ("user-too-long", "hosts:\n  - {name: a, address: x, user: " + "u" * 40 + "}\n", r"hosts\[0\]\.user: expected a user name"),
    ("ssh-user-traversal", "ssh: {user: ../x}\n" + CLUSTER, r"ssh\.user: expected a user name"),
    ("port-zero", "hosts:\n  - {name: a, address: x, port: 0}\n", r"hosts\[0\]\.port: expected an integer from 1 to 65535"),
    ("port-high", "hosts:\n  - {name: a, address: x, port: 70000}\n", r"hosts\[0\]\.port: expected an integer from 1 to 65535"),
    ("port-word", "hosts:\n  - {name: a, address: x, port: ssh}\n", r"hosts\[0\]\.port: expected an integer"),
    ("nic-injection", "hosts:\n  - {name: a, address: x, nic: 'eth0;id'}\n", r"hosts\[0\]\.nic: expected a network interface name"),
    ("nic-too-long", "hosts:\n  - {name: a, address: x, nic: " + "e" * 16 + "}\n", r"hosts\[0\]\.nic: expected a network interface name"),
    ("nic-option", "hosts:\n  - {name: a, address: x, nic: -x}\n", r"hosts\[0\]\.nic: expected a network interface name"),
    ("nic-slash", "hosts:\n  - {name: a, address: x, nic: a/b}\n", r"hosts\[0\]\.nic: expected a network interface name"),
    ("gpus-negative-id", "hosts:\n  - {name: a, address: x, gpus: ['-1']}\n", r"hosts\[0\]\.gpus\[0\]: expected a GPU index"),
    ("gpus-list-in-id", "hosts:\n  - {name: a, address: x, gpus: ['0,1,2']}\n", r"hosts\[0\]\.gpus\[0\]: expected a GPU index"),
    ("gpus-id-injection", "hosts:\n  - {name: a, address: x, gpus: ['0;id']}\n", r"hosts\[0\]\.gpus\[0\]: expected a GPU index"),
    ("gpus-uuid-too-short", "hosts:\n  - {name: a, address: x, gpus: [GPU-abc]}\n", r"hosts\[0\]\.gpus\[0\]: expected a GPU index"),
    ("gpus-uuid-not-hex", "hosts:\n  - {name: a, address: x, gpus: [GPU-5c1c2d3e-aaaa-bbbb-cccc-ddddeeeeffzz]}\n", r"gpus\[0\]: expected a GPU index"),
    ("gpus-scalar-not-an-id", "hosts:\n  - {name: a, address: x, gpus: GPU-abc}\n", r"hosts\[0\]\.gpus: expected a GPU count from 0 to 256, a GPU index or a device UUID"),
    ("gpus-quoted-number", "hosts:\n  - {name: a, address: x, gpus: '3'}\n", r"hosts\[0\]\.gpus: '3' is ambiguous: write gpus: 3 for 3 GPU\(s\), or gpus: \[3\]"),
    ("gpus-scalar-word", "hosts:\n  - {name: a, address: x, gpus: four}\n", r"hosts\[0\]\.gpus: expected a GPU count"),
    ("gpus-billion", "hosts:\n  - {name: a, address: x, gpus: 1000000000}\n", r"hosts\[0\]\.gpus: expected an integer from 0 to 256"),
    ("slots-billion", "hosts:\n  - {name: a, address: x, slots: 1000000000}\n", r"hosts\[0\]\.slots: expected an integer from 1 to 1024"),
    ("duplicate-names", "hosts:\n  - {name: a, address: x}\n  - {name: a, address: y}\n", r"hosts\[1\]\.name: 'a' is already"),
    ("name-blank", "hosts:\n  - {name: 'a b', address: x}\n", r"hosts\[0\]\.name: expected a name of letters"),
    ("host-key-policy", "hosts:\n  - {name: a, address: x, host_key_policy: yolo}\n", r"host_key_policy: expected one of strict \| accept-new"),
    ("identity-int", "hosts:\n  - {name: a, address: x, identity_file: 3}\n", r"identity_file: expected a string"),
    ("python-option", "hosts:\n  - {name: a, address: x, python: -c}\n", r"hosts\[0\]\.python: expected a path to a Python"),
    ("python-newline", "hosts:\n  - {name: a, address: x, python: \"py\\nthon\"}\n", r"hosts\[0\]\.python: expected a path"),
    ("unknown-host-key", "hosts:\n  - {name: a, address: x, gpu: 1}\n", r"hosts\[0\]: unknown key 'gpu'; did you mean 'gpus'"),
    ("cluster-bomb", merge_bomb().replace("command: [python, train.py]\nenv:", "hosts:"), r"cluster\.yaml: expands to more than"),
    ("cluster-is-a-job", JOB, r"cluster\.yaml: read as the cluster inventory \(.*job\.yaml: cluster\), but it is a job file"),
]


@pytest.mark.parametrize("text, pattern", [pytest.param(t, p, id=i) for i, t, p in CLUSTER_CASES])
def test_a_hostile_inventory_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, pattern: str) -> None:
    (tmp_path / "job.yaml").write_text(JOB + "cluster: cluster.yaml\n")
    (tmp_path / "cluster.yaml").write_text(text)
    code, output = run_cli(capsys, str(tmp_path / "job.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert_refused(code, output, pattern, tmp_path)


UUID = "GPU-5c1c2d3e-aaaa-4b2c-9d1e-0123456789ab"


@pytest.mark.parametrize("gpus, ids", [(UUID, (UUID,)), ("['3']", ("3",)), (f"[GPU-{UUID[4:].upper()}, 1]", (f"GPU-{UUID[4:].upper()}", "1")),
                                       ("MIG-" + UUID[4:], ("MIG-" + UUID[4:],)),
                                       (f"[MIG-{UUID}/1/0]", (f"MIG-{UUID}/1/0",)), ("2", None)])
def test_gpus_as_a_count_a_device_id_or_a_list_of_them(tmp_path: Path, gpus: str, ids: tuple[str, ...] | None) -> None:
    from launcher.spec import load_cluster

    (tmp_path / "cluster.yaml").write_text(f"hosts:\n  - {{name: a, address: x, gpus: {gpus}}}\n")
    host = load_cluster(tmp_path / "cluster.yaml").hosts[0]
    assert (host.gpus, host.gpu_ids) == ((len(ids), ids) if ids else (2, None))


@pytest.mark.parametrize("address, shown", [("192.0.2.7", "192.0.2.7"), ("2001:db8::7", "2001:db8::7"), ("[2001:db8::7]", "2001:db8::7"),
                                            ("node-1.lab.example", "node-1.lab.example"), ("gpu_box", "gpu_box")])
def test_good_addresses_are_taken(tmp_path: Path, address: str, shown: str) -> None:
    from launcher.spec import load_cluster

    (tmp_path / "cluster.yaml").write_text(f"hosts:\n  - {{name: a, address: '{address}', user: deploy.bot, nic: enp3s0f1, gpus: ['0', {UUID}]}}\n")
    host = load_cluster(tmp_path / "cluster.yaml").hosts[0]
    assert host.address == shown and host.ssh.user == "deploy.bot" and host.gpu_ids == ("0", UUID)


def special_file(tmp_path: Path, kind: str) -> str:
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo.yaml")
        return str(tmp_path / "fifo.yaml")
    if kind == "big":
        (tmp_path / "big.yaml").write_text("# padding\n" * 200_000 + JOB)
        return str(tmp_path / "big.yaml")
    if kind == "binary":
        (tmp_path / "bin.yaml").write_bytes(os.urandom(4096))
        return str(tmp_path / "bin.yaml")
    if kind == "dir":
        return str(tmp_path)
    if kind == "missing":
        return str(tmp_path / "nope.yaml")
    return {"dev-zero": "/dev/zero", "dev-random": "/dev/urandom", "dev-null": "/dev/null"}[kind]


SPECIAL = [("fifo", r"is not a regular file"), ("dev-zero", r"/dev/zero: is not a regular file"),
           ("dev-random", r"is not a regular file"), ("dev-null", r"is not a regular file"),
           ("big", r"larger than 1024 kB"), ("binary", r"(not UTF-8 text|invalid YAML)"),
           ("dir", r"is a directory"), ("missing", r"nope\.yaml: file not found")]


@pytest.mark.parametrize("kind, pattern", SPECIAL)
def test_a_special_file_as_the_job_is_refused_without_reading_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, pattern: str) -> None:
    code, output = run_cli(capsys, special_file(tmp_path, kind), "--runs-dir", str(tmp_path / "runs"))
    assert_refused(code, output, pattern, tmp_path)


@pytest.mark.parametrize("kind, pattern", SPECIAL[:5])
def test_a_special_file_as_the_inventory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, pattern: str) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    code, output = run_cli(capsys, str(tmp_path / "job.yaml"), "--cluster", special_file(tmp_path, kind), "--runs-dir", str(tmp_path / "runs"))
    assert_refused(code, output, pattern, tmp_path)


CLI_CASES = [
    ("local-with-cluster", ["--local", "--cluster", "cluster.yaml"], r"--local runs every process on this machine.*leave out --cluster"),
    ("nodes-zero", ["--nodes", "0"], r"--nodes: expected a positive integer, got 0"),
    ("local-nodes-zero", ["--local", "--nodes", "0"], r"--nodes: expected a positive integer, got 0"),
    ("sweep-resume", ["--sweep", "--resume"], r"--sweep measures every node count from the start and cannot --resume"),
    ("nodes-too-many", ["--nodes", "99"], r"--nodes: 99 is more than the 1 host"),
    ("nproc-over-slots", [], r"nproc_per_node: 64 is more than the 8 slot\(s\) of host 'a'"),
    ("nproc-over-local-cores", ["--local"], r"nproc_per_node: 64 is more than 8 per core of this machine's"),
    ("runs-dir-a-file", ["--local", "--runs-dir", "job.yaml"], r"--runs-dir: .*job\.yaml is not a folder"),
]


@pytest.mark.parametrize("args, pattern", [pytest.param(a, p, id=i) for i, a, p in CLI_CASES])
def test_hostile_flags_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               args: list[str], pattern: str) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    nproc = 64 if "nproc" in pattern else 1
    (tmp_path / "job.yaml").write_text(JOB + f"nproc_per_node: {nproc}\nscaling: [1]\n")
    (tmp_path / "cluster.yaml").write_text("hosts:\n  - {name: a, address: 192.0.2.1, slots: 8}\n")
    monkeypatch.chdir(tmp_path)
    runs = [] if "--runs-dir" in args else ["--runs-dir", str(tmp_path / "runs")]
    code, output = run_cli(capsys, str(tmp_path / "job.yaml"), *args, *runs)
    assert_refused(code, output, pattern, tmp_path)


@pytest.mark.parametrize("line, plain, tty", [
    (b"[h/0] \x1b]0;title\x07x\n", b"[h/0] ^[]0;title^Gx\n", b"[h/0] ^[]0;title^Gx\n"),
    (b"[h/0] \x1b[2J\x1b[H\n", b"[h/0] ^[[2J^[[H\n", b"[h/0] ^[[2J^[[H\n"),
    (b"[h/0] \x1b[1;32mok\x1b[0m\n", b"[h/0] ^[[1;32mok^[[0m\n", b"[h/0] \x1b[1;32mok\x1b[0m\n"),
    (b"[h/0] a\x00b\x7fc\n", b"[h/0] a^@b^?c\n", b"[h/0] a^@b^?c\n"),
    (b"[h/0] 1%\r50%\r100%\r\n", b"[h/0] 100%\n", b"[h/0] 100%\n"),
    (b"[h/0] \xc2\x9b2J\n", b"[h/0] \\x9b2J\n", b"[h/0] \\x9b2J\n"),
    (b"[h/0] \xff\n", "[h/0] \ufffd\n".encode(), "[h/0] \ufffd\n".encode()),
    (b"[h/0] tab\tkept\n", b"[h/0] tab\tkept\n", b"[h/0] tab\tkept\n"),
])
def test_rank_output_is_made_safe_for_a_terminal(line: bytes, plain: bytes, tty: bytes) -> None:
    from launcher.results.terminal import printable

    assert printable(line) == plain and printable(line, colour=True) == tty


# A byte no YAML file may hold: (id, bytes, column of the byte on line 2, what the line says)
BAD_BYTES = [
    ("nul", b"\x00", r"a NUL byte \(0x00\)"),
    ("soh", b"\x01", r"the control byte 0x01"),
    ("escape", b"\x1b", r"the control byte 0x1b"),
    ("delete", b"\x7f", r"the control byte 0x7f"),
    ("c1-control", "\u009b".encode(), r"the control character U\+009B"),
    ("non-character", "\ufffe".encode(), r"the character U\+FFFE"),
    ("invalid-utf8", b"\xff", r"not UTF-8 text \(byte 0xff: invalid start byte\)"),
    ("truncated-utf8", b"\xc3(", r"not UTF-8 text \(byte 0xc3: invalid continuation byte\)"),
    ("encoded-surrogate", b"\xed\xa0\xbd", r"not UTF-8 text \(byte 0xed: invalid continuation byte\)"),
]


@pytest.mark.parametrize("raw, what", [pytest.param(b, w, id=i) for i, b, w in BAD_BYTES])
@pytest.mark.parametrize("where", ["job", "cluster"])
def test_a_raw_control_or_non_utf8_byte_is_one_line_naming_line_and_column(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: bytes, what: str, where: str) -> None:
    job = (JOB + "cluster: cluster.yaml\n").encode()
    cluster = CLUSTER.encode()
    if where == "job":
        job += b"name: '\xc3\xa9" + raw + b"'\n"  # line 3, the byte in column 9: the two bytes of \u00e9 are one column
    else:
        cluster = cluster.replace(b"address: 192.0.2.1", b"address: '192.0.2.1" + raw + b"'")  # line 2, column 34
    (tmp_path / "job.yaml").write_bytes(job)
    (tmp_path / "cluster.yaml").write_bytes(cluster)
    code, output = run_cli(capsys, str(tmp_path / "job.yaml"), "--runs-dir", str(tmp_path / "runs"))
    name = "job.yaml: line 3, column 9" if where == "job" else "cluster.yaml: line 2, column 34"
    assert_refused(code, output, re.escape(name) + ": (holds )?" + what, tmp_path)


def test_a_json_job_with_an_escaped_emoji_is_the_emoji(tmp_path: Path) -> None:
    import json

    from launcher.spec import load_cluster, load_job

    (tmp_path / "job.yaml").write_text(json.dumps({"command": ["python", "x.py", "\U0001F642"], "env": {"E\u00e9": "1"},
                                                  "name": "x"}, ensure_ascii=True).replace("E\\u00e9", "E"))
    assert "\\ud83d\\ude42" in (tmp_path / "job.yaml").read_text()  # what json.dumps writes
    assert load_job(tmp_path / "job.yaml").command == ("python", "x.py", "\U0001F642")
    (tmp_path / "cluster.yaml").write_text('{"hosts": [{"name": "a", "address": "local", "python": "/opt/\\ud83d\\ude42/python"}]}')
    assert load_cluster(tmp_path / "cluster.yaml").hosts[0].python == "/opt/\U0001F642/python"


LONE_SURROGATES = [
    ("job", 'command: [python, "x\\ud83d"]\n', r"job\.yaml: command\[1\]: holds half a UTF-16 surrogate pair, '\\ud83d'"),
    ("job", JOB + 'env: {X: "\\ude42\\ud83d"}\n', r"job\.yaml: env\.X: holds half a UTF-16 surrogate pair, '\\ude42'"),
    ("job", JOB + '"\\udc00": 1\n', r"job\.yaml: \\udc00: holds half a UTF-16 surrogate pair, '\\udc00'"),
    ("cluster", 'hosts:\n  - {name: a, address: x, identity_file: "k\\udfff"}\n',
     r"cluster\.yaml: hosts\[0\]\.identity_file: holds half a UTF-16 surrogate pair, '\\udfff'"),
]


@pytest.mark.parametrize("where, text, pattern", LONE_SURROGATES)
def test_a_lone_surrogate_escape_is_one_line_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            where: str, text: str, pattern: str) -> None:
    (tmp_path / "job.yaml").write_text((text if where == "job" else JOB) + "cluster: cluster.yaml\n")
    (tmp_path / "cluster.yaml").write_text(text if where == "cluster" else CLUSTER)
    code, output = run_cli(capsys, str(tmp_path / "job.yaml"), "--runs-dir", str(tmp_path / "runs"))
    assert_refused(code, output, pattern, tmp_path)


@pytest.mark.parametrize("job_arg, job_text, message", [
    ("jobs/x/job.yaml", JOB + "cluster: ../../cluster.yaml\n", "cluster.yaml: hosts: expected a non-empty list of hosts, got a list"),
    ("jobs/x/../x/./job.yaml", JOB + "nproc_per_nod: 2\n", "jobs/x/job.yaml: unknown key 'nproc_per_nod'; did you mean 'nproc_per_node'?"),
    ("jobs/x/job.yaml", JOB + "workdir: ../../nowhere\n", "jobs/x/job.yaml: workdir: '../../nowhere' is not a directory (resolved to nowhere)"),
    ("jobs/x/job.yaml", JOB + "image: {requirements: ../y/../r.txt}\n",
     "jobs/x/job.yaml: image.requirements: '../y/../r.txt' is not a file (resolved to jobs/r.txt)"),
    ("{tmp}/jobs/x/job.yaml", JOB + "cluster: ../../cluster.yaml\n", "{tmp}/cluster.yaml: hosts: expected a non-empty list of hosts, got a list"),
])
def test_errors_name_files_by_normalised_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                               job_arg: str, job_text: str, message: str) -> None:
    (tmp_path / "jobs" / "x").mkdir(parents=True)
    (tmp_path / "jobs" / "x" / "job.yaml").write_text(job_text)
    (tmp_path / "cluster.yaml").write_text("hosts: []\n")
    monkeypatch.chdir(tmp_path)
    code, output = run_cli(capsys, job_arg.format(tmp=tmp_path), "--runs-dir", str(tmp_path / "runs"))
    assert (code, output) == (2, f"launch: error: {message.format(tmp=tmp_path)}\n")
