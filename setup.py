"""Builds repsr_ext._C against the torch that is installed (use `pip install --no-build-isolation .`).

CPU sources are always compiled. CUDA sources (csrc/ops_cuda.cpp, csrc/cuda/*.cu) are compiled when
torch is a CUDA build and nvcc is found, or when FORCE_CUDA=1 (FORCE_CUDA=0 turns them off).
After a successful compile, the torch version, CUDA version, compiled backends and the reason for
the CUDA decision are written to repsr_ext/_build_info.py; the package compares them with the
running torch at import, and asks the dispatcher which kernels really are registered.
"""
import glob
import os
import sys
import sysconfig

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "repsr_ext builds its C++ extension against the torch that is installed, and none is.\n"
        "Install torch first, then build without isolation so pip does not fetch another torch:\n"
        "    pip install torch==2.13.0   # or your CUDA build\n"
        "    pip install --no-build-isolation ."
    )

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def cuda_home_problem():
    """Why CUDA_HOME (as torch found it: $CUDA_HOME, else the folder above `which nvcc`) cannot build
    CUDA code, or None. An nvcc wrapper (e.g. /usr/bin/nvcc from a distribution package) gives a
    CUDA_HOME without the toolkit's headers, and the compile would fail on crt/host_defines.h."""
    if CUDA_HOME is None:
        return "nvcc not found (set CUDA_HOME=/path/to/cuda)"
    if not os.path.isfile(os.path.join(CUDA_HOME, "include", "cuda_runtime.h")):
        return (f"CUDA_HOME={CUDA_HOME} has no include/cuda_runtime.h (an nvcc wrapper, not a toolkit); "
                "set CUDA_HOME to the CUDA toolkit, e.g. CUDA_HOME=/usr/local/cuda")
    return None


def decide_cuda():
    """(build the CUDA kernels?, the reason in words)."""
    force = os.environ.get("FORCE_CUDA")
    has_cuda_sources = bool(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    problem = cuda_home_problem()
    if force == "0":
        reason, use = "FORCE_CUDA=0", False
    elif torch.version.cuda is None:
        if force == "1":
            sys.exit(f"repsr_ext: FORCE_CUDA=1 but torch {torch.__version__} is a CPU build, which cannot run "
                     "CUDA kernels: install a CUDA build of torch first")
        reason, use = f"torch {torch.__version__} is a CPU build", False
    elif problem is not None:
        if force == "1":
            sys.exit(f"repsr_ext: FORCE_CUDA=1 but {problem}")
        reason, use = problem, False
    else:
        why = "FORCE_CUDA=1" if force == "1" else "torch is a CUDA build"
        reason, use = f"{why}: torch CUDA {torch.version.cuda}, nvcc at {CUDA_HOME}", True
    if use and not has_cuda_sources:
        reason, use = reason + ", but there are no CUDA sources", False
    print(f"repsr_ext: building the {'CPU + CUDA' if use else 'CPU-only'} extension ({reason})")
    return use, reason


def cuda_library_includes() -> list:
    # CUDA wheels of torch ship the CUDA library headers (cublas_v2.h, cusparse.h, ...) under
    # site-packages/nvidia/cu*/include; a bare nvcc install (no toolkit libraries) needs them.
    site = sysconfig.get_paths()["purelib"]
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


def write_build_info(package_dir: str, with_cuda: bool, decision: str) -> None:
    """Records what was compiled, after the compile succeeded: a failed rebuild leaves the previous
    record (and its _C) or none, never a claim of kernels that are not there."""
    backends = ("cpu", "cuda") if with_cuda else ("cpu",)
    with open(os.path.join(package_dir, "_build_info.py"), "w") as f:
        f.write("# Written by setup.py after a successful build; compared with the running torch at import.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n")
        f.write(f"BACKENDS = {backends!r}\n")
        f.write(f"BUILD_DECISION = {decision!r}\n")
        f.write(f"PACKAGE_VERSION = {VERSION!r}\n")


class BuildInfoAfterBuild(BuildExtension):
    def run(self):
        super().run()
        # In place (editable installs) the package is the source folder; otherwise build_py has
        # already copied the package to build_lib, where the wheel is made from.
        package_dir = os.path.join(HERE if self.inplace else self.build_lib, "repsr_ext")
        write_build_info(package_dir, WITH_CUDA, DECISION)


def extension(with_cuda: bool):
    cpu_sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/*_common.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: torch's BuildExtension picks the standard its headers need (C++17 up to
    # torch 2.13, C++20 from 2.14).
    # -fopenmp: at::parallel_for is a header template over OpenMP; without it the op runs on one
    # thread.
    cxx_flags = ["-O3", "-fvisibility=hidden", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not with_cuda:
        return CppExtension(
            "repsr_ext._C", cpu_sources, include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags,
        )
    cuda_sources = ["csrc/ops_cuda.cpp"] + sorted(glob.glob("csrc/cuda/*.cu"))
    nvcc_flags = ["-O3", "--use_fast_math", "-lineinfo", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "repsr_ext._C", cpu_sources + cuda_sources,
        include_dirs=[os.path.join(HERE, "csrc")] + cuda_library_includes(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags}, extra_link_args=link_flags,
    )


WITH_CUDA, DECISION = decide_cuda()

setup(
    name="repsr_ext",
    version=VERSION,
    packages=find_packages(include=["repsr_ext", "repsr_ext.*"]),
    package_data={"repsr_ext": ["models/*.safetensors", "configs/*"]},
    ext_modules=[extension(WITH_CUDA)],
    cmdclass={"build_ext": BuildInfoAfterBuild},
)
