"""The workdir apart from the image, without hosts: what belongs to it, its hash, the hash cache,
what a host would be sent, and workdirs refused or warned about."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.errors import SpecError
from launcher.spec import load_job
from launcher.sync import manifest as manifest_module
from launcher.sync.manifest import LARGE_BYTES, Manifest, scan, size_warning
from launcher.sync.transfer import plan_transfer


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def paths(m: Manifest) -> list[str]:
    return [e.path for e in m.entries]


def test_defaults_and_launchignore_keep_caches_data_and_environments_out(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write(work, {
        "train.py": "print(1)\n", "pkg/model.py": "x = 1\n", "pkg/__pycache__/model.cpython-311.pyc": b"\0",
        ".git/HEAD": "ref\n", "runs/old/summary.json": "{}", "env/pyvenv.cfg": "home = /usr\n",
        "env/lib/site.py": "", ".venv/bin/python": "", "data/big.bin": b"\0" * 10, "data/keep.csv": "a,b\n",
        "ckpt.pt": b"\1", ".launchignore": "# data stays here\ndata/*\n!data/keep.csv\n*.pt\nruns/\n!runs/\n",
    })
    found = paths(scan(work, tmp_path / "cache"))
    assert found == [".launchignore", "data/keep.csv", "pkg/model.py", "runs/old/summary.json", "train.py"]


def test_the_hash_changes_exactly_when_a_kept_file_changes(tmp_path: Path) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    write(work, {"train.py": "print(1)\n", "lib/util.py": "u = 1\n", ".launchignore": "scratch/\n", "scratch/a": "1"})
    first = scan(work, cache).digest
    write(work, {"scratch/a": "2", "scratch/b": "3"})
    assert scan(work, cache).digest == first  # ignored files
    os.utime(work / "train.py", (1, 1))
    assert scan(work, cache).digest == first  # a touch is no change
    write(work, {"train.py": "print(2)\n"})
    edited = scan(work, cache).digest
    assert edited != first
    write(work, {"train.py": "print(1)\n"})
    assert scan(work, cache).digest == first  # the same content is the same workdir
    (work / "train.py").chmod(0o755)
    assert scan(work, cache).digest != first  # the exec bit counts
    (work / "train.py").chmod(0o644)
    (work / "lib/util.py").rename(work / "lib/utils.py")
    assert scan(work, cache).digest != first  # so does a name


def test_an_unchanged_workdir_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    write(work, {f"f{i}.txt": f"{i}\n" for i in range(50)})
    old = 1_000_000_000
    for i in range(50):
        os.utime(work / f"f{i}.txt", (old, old))  # long ago: not racily clean
    first = scan(work, cache)
    calls: list[Path] = []
    real = manifest_module._sha256
    monkeypatch.setattr(manifest_module, "_sha256", lambda path: calls.append(path) or real(path))
    assert scan(work, cache) == first and calls == []
    write(work, {"f7.txt": "seven, edited\n"})
    again = scan(work, cache)
    assert calls == [work / "f7.txt"] and again.digest != first.digest


def test_a_file_modified_within_the_racy_window_is_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    write(work, {"fresh.py": "a\n"})
    scan(work, cache)
    calls: list[Path] = []
    real = manifest_module._sha256
    monkeypatch.setattr(manifest_module, "_sha256", lambda path: calls.append(path) or real(path))
    scan(work, cache)
    assert calls == [work / "fresh.py"]  # its mtime is too recent to trust a cached hash


def test_a_transfer_starts_from_the_nearest_copy_and_sends_only_the_difference(tmp_path: Path) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    write(work, {"train.py": "v1\n", "data.bin": b"\0" * 5000, "old.py": "gone soon\n"})
    v1 = scan(work, cache)
    write(work, {"train.py": "v2\n"})
    (work / "old.py").unlink()
    write(work, {"new.py": "new\n"})
    v2 = scan(work, cache)

    assert plan_transfer("h1", v2, [v2.hash, v1.hash], {}).present
    fresh = plan_transfer("h1", v2, [], {})
    assert fresh.base is None and fresh.bytes == v2.total_bytes
    unknown = plan_transfer("h1", v2, [v1.hash], {})  # a copy whose manifest is not known cannot be a base
    assert unknown.base is None
    delta = plan_transfer("h1", v2, ["0" * 16, v1.hash], {v1.hash: v1, "0" * 16: Manifest(())})
    assert delta.base == v1.hash
    assert sorted(e.path for e in delta.send) == ["new.py", "train.py"]
    assert delta.remove == ("old.py", "train.py") and delta.bytes == 7
    assert "send 2 file(s)" in delta.describe() and "drop 2" in delta.describe()


def test_a_host_whose_newest_copy_is_the_workdir_and_that_has_few_needs_no_tidying(tmp_path: Path) -> None:
    """Tidying a host's copies (touching the one in use, removing the oldest) is skipped after a
    launch only where it would change nothing."""
    work = tmp_path / "work"
    write(work, {"train.py": "v1\n"})
    v1 = scan(work, tmp_path / "cache")
    others = ["1" * 16, "2" * 16, "3" * 16]
    assert plan_transfer("h1", v1, [v1.hash], {}).leaves_copies_tidy(3)
    assert plan_transfer("h1", v1, [v1.hash, *others[:2]], {}).leaves_copies_tidy(3)
    assert not plan_transfer("h1", v1, [v1.hash, *others], {}).leaves_copies_tidy(3)  # one too many
    assert not plan_transfer("h1", v1, [others[0], v1.hash], {}).leaves_copies_tidy(3)  # back to an older copy
    assert not plan_transfer("h1", v1, others[:1], {}).leaves_copies_tidy(3)  # a new copy
    assert not plan_transfer("h1", v1, [], {}).leaves_copies_tidy(3)
    assert not plan_transfer("h1", v1, [v1.hash], {}, leftovers=True).leaves_copies_tidy(3)  # a transfer's folder is there


def test_a_large_workdir_is_named_with_its_largest_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    write(work, {"data/a.bin": b"\0" * 3000, "data/b.bin": b"\0" * 3000, "model.pt": b"\0" * 2000, "train.py": "x\n"})
    m = scan(work, tmp_path / "cache")
    assert size_warning(work, m) is None
    monkeypatch.setattr(manifest_module, "LARGE_BYTES", 5000)
    warning = size_warning(work, m)
    assert warning and "data/ 6.0 kB, model.pt 2.0 kB, train.py 2 B" in warning and str(work / ".launchignore") in warning
    assert LARGE_BYTES == 100 * 10**6


@pytest.mark.parametrize("workdir", ["/", "HOME", "ABOVE"])
def test_the_root_or_a_home_folder_is_refused_as_a_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workdir: str) -> None:
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    folder = home / "jobs"
    folder.mkdir()
    value = {"/": "/", "HOME": str(home), "ABOVE": str(home.parent)}[workdir]
    (folder / "job.yaml").write_text(f"name: j\nworkdir: {value}\ncommand: [python, t.py]\n")
    with pytest.raises(SpecError, match=r"job\.yaml: workdir: .* is (the root folder|your home folder|a folder above).*give it the job's own folder"):
        load_job(folder / "job.yaml")
    (folder / "job.yaml").write_text("name: j\ncommand: [python, t.py]\n")
    assert load_job(folder / "job.yaml").workdir == folder.resolve()


def test_links_inside_the_workdir_are_kept_as_links_and_links_leaving_it_are_left_out(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not the job's\n")
    work = tmp_path / "work"
    write(work, {"train.py": "x\n", "data/real.csv": "a\n", "conf/base.yaml": "k: 1\n"})
    (work / "latest.csv").symlink_to("data/real.csv")
    (work / "conf" / "abs.csv").symlink_to(work / "data" / "real.csv")  # absolute, inside: made relative
    (work / "datadir").symlink_to("data")  # a folder link: kept as a link, not walked
    (work / "shadow").symlink_to(outside)
    (work / "etc").symlink_to("/etc")
    (work / "dangling").symlink_to("nowhere.txt")
    (work / "up").symlink_to("..")
    m = scan(work, tmp_path / "cache")
    links = {e.path: e.link for e in m.entries if e.link is not None}
    assert links == {"conf/abs.csv": "../data/real.csv", "datadir": "data", "latest.csv": "data/real.csv"}
    assert paths(m) == ["conf/abs.csv", "conf/base.yaml", "data/real.csv", "datadir", "latest.csv", "train.py"]
    assert sorted(x.split(" ")[0] for x in m.left_out) == ["dangling", "etc", "shadow", "up"]
    warning = manifest_module.link_warning(work, m)
    assert warning and "shadow -> " in warning and "outside the workdir" in warning and "does not exist" in warning
    assert Manifest.from_json(m.to_json()) == m
    before = m.digest
    (work / "latest.csv").unlink()
    (work / "latest.csv").symlink_to("conf/base.yaml")  # the same path, another target: another workdir
    assert scan(work, tmp_path / "cache").digest != before


def test_an_unusable_launchignore_is_one_clear_error(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write(work, {"train.py": "x\n"})
    (work / ".launchignore").symlink_to("/etc/hostname")
    with pytest.raises(SpecError, match=r"\.launchignore: is a symbolic link"):
        scan(work, tmp_path / "cache")
    (work / ".launchignore").unlink()
    os.mkfifo(work / ".launchignore")
    with pytest.raises(SpecError, match=r"\.launchignore: is not a regular file"):
        scan(work, tmp_path / "cache")
    (work / ".launchignore").unlink()
    (work / ".launchignore").write_text("ok/\n\\\n")
    with pytest.raises(SpecError, match=r"\.launchignore: .*pattern"):
        scan(work, tmp_path / "cache")


def test_a_file_gone_between_the_listing_and_its_hash_is_left_out_of_the_copy(tmp_path: Path, monkeypatch) -> None:
    """Another program's temporary file in the workdir (a run directory another launch writes in), renamed
    away after the walk listed it and before it was read."""
    workdir = tmp_path / "work"
    (workdir / "logs").mkdir(parents=True)
    (workdir / "train.py").write_text("print('hi')\n")
    (workdir / "logs" / ".status.json.12.tmp").write_text("{}")
    real = manifest_module._sha256

    def renamed_away(path: Path) -> str:
        if path.name.endswith(".tmp"):
            path.unlink()
        return real(path)

    monkeypatch.setattr(manifest_module, "_sha256", renamed_away)
    manifest = scan(workdir, tmp_path / "cache")
    assert [entry.path for entry in manifest.entries] == ["train.py"]
