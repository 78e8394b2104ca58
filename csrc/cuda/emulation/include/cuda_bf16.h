// Stands in for the CUDA toolkit's <cuda_bf16.h> when csrc/cuda is compiled for the CPU emulator.
#pragma once
#include "../cuda_emu.h"
