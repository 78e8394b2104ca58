// Stands in for the CUDA toolkit's <cuda_fp16.h> when csrc/cuda is compiled for the CPU emulator.
#pragma once
#include "../cuda_emu.h"
