"""The wheelhouse holds only what a job's requirements add to its base image.

The first tests give `resolve` a made-up base (no Docker); the others read a real base image with
this machine's Docker engine and build job images on it. Every test resolves with this machine's
pip configuration, as the launcher does.
"""

from __future__ import annotations

import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from launcher.errors import RunError
from launcher.image import build, wheels
from launcher.image.wheels import BaseEnv, Distribution, base_environment, resolve
from launcher.spec import load_job

HERE_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(wheels, "CACHE", tmp_path / "cache")
    return tmp_path / "cache"


def requirements(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"requirements-{uuid.uuid4().hex[:8]}.txt"
    path.write_text(text)
    return path


def wheel_names(wheelhouse: Path) -> list[str]:
    return sorted(p.name for p in wheelhouse.iterdir() if p.name != ".complete")


def made_up_base(*dists: tuple[str, str], python: str = HERE_PYTHON) -> BaseEnv:
    return BaseEnv("made-up:base", "sha256:" + uuid.uuid4().hex, python, sysconfig.get_platform(),
                   tuple(Distribution(n, v, f"Metadata-Version: 2.1\nName: {n}\nVersion: {v}\n") for n, v in dists))


# --- a made-up base: pip sees its dist-infos as installed ---------------------------------------

def test_a_requirement_a_made_up_base_meets_downloads_nothing(tmp_path: Path, cache: Path) -> None:
    said: list[str] = []
    house = resolve(requirements(tmp_path, "six\n"), made_up_base(("six", "1.16.0")), said.append)
    assert wheel_names(house) == [] and (house / ".complete").exists()
    assert any("satisfies" in line for line in said), said


def test_a_pin_the_made_up_base_misses_is_downloaded(tmp_path: Path, cache: Path) -> None:
    said: list[str] = []
    house = resolve(requirements(tmp_path, "six==1.17.0\n"), made_up_base(("six", "1.16.0")), said.append)
    assert wheel_names(house) == ["six-1.17.0-py2.py3-none-any.whl"]
    assert "six 1.17.0 (replacing the base's 1.16.0)" in said[-1]


def test_another_python_in_the_base_downloads_everything(tmp_path: Path, cache: Path) -> None:
    said: list[str] = []
    house = resolve(requirements(tmp_path, "six==1.16.0\n"), made_up_base(("six", "1.16.0"), python="2.7"), said.append)
    assert wheel_names(house) == ["six-1.16.0-py2.py3-none-any.whl"]
    assert "has Python 2.7" in said[0] and "downloading every requirement" in said[0]


def test_an_unresolvable_requirement_is_one_line_naming_the_file(tmp_path: Path, cache: Path) -> None:
    path = requirements(tmp_path, "no-such-distribution-for-launch-tests\n")
    with pytest.raises(RunError) as error:
        resolve(path, made_up_base(), lambda _: None)
    message = str(error.value)
    assert message.startswith(f"{path}: pip could not resolve the requirements: ERROR: ")
    assert "no-such-distribution-for-launch-tests" in message and "\n" not in message
    assert not list((cache / "wheels").glob("*/.complete")), "a failed resolution is not cached"


# --- a real base image ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client():
    import docker

    try:
        engine = docker.from_env()
        engine.ping()
    except docker.errors.DockerException as error:
        pytest.skip(f"this machine's Docker engine cannot be reached ({error}); scripts/test.sh starts it")
    return engine


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module's real-base tests, so the base is read once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def base(client, base_image: str, shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> BaseEnv:
    """The lab's base (torch and numpy), as base_environment reads it."""
    monkeypatch.setattr(wheels, "CACHE", shared_cache)
    env = base_environment(client, base_image)
    names = {d.name.lower() for d in env.distributions}
    assert {"torch", "numpy"} <= names and "six" not in names, f"{base_image} should hold torch and numpy, not six: {names}"
    return env


def version_in(env: BaseEnv, name: str) -> str:
    return next(d.version for d in env.distributions if d.name.lower() == name)


@pytest.mark.integration
def test_the_base_is_read_once_and_its_container_removed(client, base_image: str, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from docker.models.containers import ContainerCollection

    env = base_environment(client, base_image)
    assert env.id == client.images.get(base_image).id and env.python == HERE_PYTHON
    torch = next(d for d in env.distributions if d.name == "torch")
    assert "Requires-Dist:" in torch.metadata, "the resolver needs the base's dependencies"
    assert (cache / "base-envs" / f"{env.id.split(':')[1]}.json").is_file()
    assert not client.containers.list(all=True, filters={"label": "launch.role=base-probe"})

    def no_container(*_args, **_kwargs):
        raise AssertionError("the base was read again instead of from the cache")

    monkeypatch.setattr(ContainerCollection, "create", no_container)
    monkeypatch.setattr(ContainerCollection, "run", no_container)
    assert base_environment(client, base_image) == env


@pytest.mark.integration
def test_requirements_the_base_meets_give_an_empty_wheelhouse(tmp_path: Path, base: BaseEnv) -> None:
    torch = version_in(base, "torch")  # e.g. 2.13.0+cpu: a pin without the local label still matches
    said: list[str] = []
    house = resolve(requirements(tmp_path, f"numpy\ntorch=={torch.split('+')[0]}\n"), base, said.append)
    assert wheel_names(house) == [], "the base's numpy and torch were downloaded again"
    assert "satisfies" in said[-1]


@pytest.mark.integration
def test_only_what_the_base_lacks_is_downloaded(tmp_path: Path, base: BaseEnv) -> None:
    house = resolve(requirements(tmp_path, "numpy\nsix==1.16.0\n"), base, lambda _: None)
    assert wheel_names(house) == ["six-1.16.0-py2.py3-none-any.whl"]


@pytest.mark.integration
def test_a_pin_the_base_misses_replaces_its_version(tmp_path: Path, base: BaseEnv) -> None:
    held = version_in(base, "typing_extensions")
    said: list[str] = []
    house = resolve(requirements(tmp_path, f"typing_extensions<{held}\n"), base, said.append)
    [wheel] = wheel_names(house)
    assert wheel.startswith("typing_extensions-") and f"-{held}-" not in wheel
    assert f"(replacing the base's {held})" in said[-1]


@pytest.mark.integration
def test_a_new_package_keeps_the_base_torch(tmp_path: Path, base: BaseEnv) -> None:
    """The newest torchvision wants a newer torch (GBs with CUDA); one built for the base's torch will do."""
    house = resolve(requirements(tmp_path, "torch\ntorchvision\n"), base, lambda _: None)
    names = wheel_names(house)
    assert any(n.startswith("torchvision-") for n in names), names
    assert not any(n.startswith(("torch-", "nvidia_")) for n in names), names


@pytest.mark.integration
def test_a_base_without_python3_is_named(client, tmp_path: Path, cache: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "hello.txt").write_text("no python here\n")
    (context / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
    tag = f"launch-test/no-python:{uuid.uuid4().hex[:12]}"
    image, _ = client.images.build(path=str(context), tag=tag, rm=True)
    try:
        with pytest.raises(RunError, match=f"the base image {tag} has no python3"):
            base_environment(client, tag)
        assert not client.containers.list(all=True, filters={"ancestor": image.id})
    finally:
        client.images.remove(image.id, force=True)


@pytest.mark.integration
def test_a_base_that_cannot_be_had_is_named(client, cache: Path) -> None:
    tag = f"launch-test/absent:{uuid.uuid4().hex[:12]}"
    with pytest.raises(RunError, match=f"the base image {tag} is not on this machine and pulling it failed"):
        base_environment(client, tag)


def job_on(tmp_path: Path, base_image: str, requirement_text: str):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "requirements.txt").write_text(requirement_text)
    (folder / "job.yaml").write_text(
        f"name: wheels-test-{uuid.uuid4().hex[:8]}\ncommand: [python, train.py]\n"
        f"image: {{base: '{base_image}', requirements: requirements.txt}}\n"
    )
    return load_job(folder / "job.yaml")


@pytest.mark.integration
def test_a_job_image_the_base_satisfies_adds_no_packages(client, tmp_path: Path, base: BaseEnv, base_image: str) -> None:
    built = build.build_image(job_on(tmp_path, base_image, "numpy\ntorch\n"), client, lambda _: None)
    try:
        assert built.built
        added = client.images.get(built.id).attrs["Size"] - client.images.get(base_image).attrs["Size"]
        assert added < 5_000_000, f"the job image is {added} bytes more than its base"
    finally:
        client.images.remove(built.id, force=True)


@pytest.mark.integration
def test_a_job_image_gets_what_the_base_lacks(client, tmp_path: Path, base: BaseEnv, base_image: str) -> None:
    built = build.build_image(job_on(tmp_path, base_image, "numpy\nsix==1.16.0\n"), client, lambda _: None)
    try:
        out = client.containers.run(built.id, ["python3", "-c", "import numpy, six; print(six.__version__)"],
                                    entrypoint=[], network_disabled=True, remove=True)
        assert out.decode().strip() == "1.16.0"
    finally:
        client.images.remove(built.id, force=True)
