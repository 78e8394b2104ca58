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
