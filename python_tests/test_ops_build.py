"""The import-time check of the compiled extension: a missing or mismatched build is a loud,
actionable error, never a silent fallback."""
import subprocess
import sys
import textwrap

import torch

from repsr_ext import ops


def test_build_info_matches_running_torch():
    ops.require_extension()
    assert ops.build_info.TORCH_VERSION == torch.__version__
    assert "cpu" in ops.build_info.BACKENDS
    assert ops.cpu_isa() in ("avx512", "avx2", "portable")


def test_version_mismatch_message_names_both_versions_and_the_fix():
    assert ops.version_mismatch("2.13.0+cpu", "2.13.0+cpu") is None
    msg = ops.version_mismatch("2.11.0+cu130", "2.13.0+cpu")
    assert "built for torch 2.11.0+cu130" in msg and "torch 2.13.0+cpu is running" in msg
    assert "pip install --no-build-isolation" in msg


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_mismatched_build_warns_at_import_and_fused_ops_raise():
    result = _run(
        """
        import sys, types, warnings
        fake = types.ModuleType("repsr_ext._build_info")
        fake.TORCH_VERSION, fake.CUDA_VERSION, fake.BACKENDS = "1.0.0", None, ("cpu",)
        sys.modules["repsr_ext._build_info"] = fake
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import repsr_ext
        assert any("built for torch 1.0.0" in str(w.message) for w in caught), caught
        net = repsr_ext.RepSRNet.preset("M1C4", scale=2).eval()
        try:
            repsr_ext.FusedSR.load(net)
        except RuntimeError as e:
            assert "built for torch 1.0.0" in str(e)
            print("raised")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "raised" in result.stdout


def test_missing_build_is_reported():
    result = _run(
        """
        import sys, builtins
        real_import = builtins.__import__
        def no_build(name, globals=None, locals=None, fromlist=(), level=0):
            if fromlist and "_build_info" in fromlist:
                raise ImportError("simulated: not built")
            return real_import(name, globals, locals, fromlist, level)
        builtins.__import__ = no_build
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import repsr_ext
        builtins.__import__ = real_import
        assert any("never built" in str(w.message) for w in caught), caught
        from repsr_ext import ops
        try:
            ops.require_extension()
        except RuntimeError as e:
            print("raised:", "pip install --no-build-isolation" in str(e))
        """
    )
    assert result.returncode == 0, result.stderr
    assert "raised: True" in result.stdout


def test_backends_come_from_the_dispatcher(monkeypatch):
    """A stale build record cannot make has_backend claim kernels the dispatcher lacks."""
    has_cuda_kernels = torch._C._dispatch_has_kernel_for_dispatch_key("repsr_ext::fused_sr", "CUDA")
    monkeypatch.setattr(ops.build_info, "BACKENDS", ("cpu", "cuda"))
    assert ops.has_backend("cuda") == has_cuda_kernels
    assert ops.has_backend("cpu") and "cpu" in ops.backends()
    monkeypatch.setattr(ops.build_info, "BACKENDS", ("cpu",))
    assert ops.has_backend("cuda") == has_cuda_kernels


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _setup_copy(tmp_path):
    """The tracked sources (setup.py, csrc/, repsr_ext/ without build products) in a fresh folder."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "_build_info.py", "__pycache__", "experiments", "*.egg-info", "benchmarks"))
    return copy


def _setup(copy, *args, **env):
    import os

    full_env = {**os.environ, "MAX_JOBS": "1", **env}
    return subprocess.run([sys.executable, "setup.py", *args], cwd=copy, capture_output=True, text=True,
                          timeout=600, env=full_env)


def test_failed_build_writes_no_build_info(tmp_path):
    copy = _setup_copy(tmp_path)
    # A compiler that answers --version like g++ and fails every compile at once.
    broken = tmp_path / "broken-c++"
    broken.write_text('#!/bin/sh\nif [ "$1" = --version ]; then exec g++ --version; fi\n'
                      'echo "simulated compile error" >&2\nexit 1\n')
    broken.chmod(0o755)
    result = _setup(copy, "build_ext", "--inplace", FORCE_CUDA="0", CXX=str(broken), CC=str(broken))
    assert result.returncode != 0
    assert "simulated compile error" in result.stdout + result.stderr
    assert not (copy / "repsr_ext" / "_build_info.py").exists(), "a failed build must not claim a build"


def test_force_cuda_with_cpu_torch_names_the_problem(tmp_path):
    if torch.version.cuda is not None:
        import pytest

        pytest.skip("torch is a CUDA build here")
    result = _setup(_setup_copy(tmp_path), "--name", FORCE_CUDA="1")
    assert result.returncode != 0
    assert "is a CPU build" in result.stderr + result.stdout and "CUDA_HOME" not in result.stderr


def test_nvcc_wrapper_without_headers_is_not_taken_for_cuda(tmp_path):
    import pytest

    if torch.version.cuda is None:
        pytest.skip("needs a CUDA build of torch (CI's CUDA step)")
    fake = tmp_path / "fakecuda"
    (fake / "bin").mkdir(parents=True)
    (fake / "bin" / "nvcc").write_text("#!/bin/sh\nexit 0\n")
    (fake / "bin" / "nvcc").chmod(0o755)
    copy = _setup_copy(tmp_path)
    decided = _setup(copy, "--name", CUDA_HOME=str(fake), FORCE_CUDA="")
    assert decided.returncode == 0 and "CPU-only" in decided.stdout and "cuda_runtime.h" in decided.stdout
    forced = _setup(copy, "--name", CUDA_HOME=str(fake), FORCE_CUDA="1")
    assert forced.returncode != 0 and "cuda_runtime.h" in forced.stderr + forced.stdout
