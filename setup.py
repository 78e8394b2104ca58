"""Builds repsr_ext._C against the torch that is installed (use `pip install --no-build-isolation .`).

CPU sources are always compiled. CUDA sources (csrc/ops_cuda.cpp, csrc/cuda/*.cu) are compiled when
torch is a CUDA build and nvcc is found, or when FORCE_CUDA=1 (FORCE_CUDA=0 turns them off).
The torch version, CUDA version and compiled backends are written to repsr_ext/_build_info.py, and
the package compares them with the running torch at import.
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


def decide_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    has_cuda_sources = bool(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    if force == "0":
        reason, use = "FORCE_CUDA=0", False
    elif force == "1":
        reason, use = "FORCE_CUDA=1", True
    elif torch.version.cuda is None:
        reason, use = f"torch {torch.__version__} is a CPU build", False
    elif CUDA_HOME is None:
        reason, use = "nvcc not found (set CUDA_HOME)", False
    else:
        reason, use = f"torch CUDA {torch.version.cuda} and nvcc at {CUDA_HOME}", True
    if use and not has_cuda_sources:
        reason, use = reason + ", but there are no CUDA sources yet", False
    if use and CUDA_HOME is None:
        sys.exit("repsr_ext: FORCE_CUDA=1 but nvcc was not found; set CUDA_HOME=/path/to/cuda")
    print(f"repsr_ext: building the {'CPU + CUDA' if use else 'CPU-only'} extension ({reason})")
    return use


def cuda_library_includes() -> list:
    # CUDA wheels of torch ship the CUDA library headers (cublas_v2.h, cusparse.h, ...) under
    # site-packages/nvidia/cu*/include; a bare nvcc install (no toolkit libraries) needs them.
    site = sysconfig.get_paths()["purelib"]
    return sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))


def write_build_info(with_cuda: bool) -> None:
    backends = ("cpu", "cuda") if with_cuda else ("cpu",)
    with open(os.path.join(HERE, "repsr_ext", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time; compared with the running torch at import.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"CUDA_VERSION = {(torch.version.cuda if with_cuda else None)!r}\n")
        f.write(f"BACKENDS = {backends!r}\n")
        f.write(f"PACKAGE_VERSION = {VERSION!r}\n")


def extension():
    with_cuda = decide_cuda()
    write_build_info(with_cuda)
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


setup(
    name="repsr_ext",
    version=VERSION,
    packages=find_packages(include=["repsr_ext", "repsr_ext.*"]),
    package_data={"repsr_ext": ["models/*.safetensors", "configs/*"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
