// Fibers for the CUDA emulator: each CUDA thread of a block runs on its own stack, and the block's
// OS thread switches between them at barriers and warp collectives. On x86-64 the switch is a few
// instructions (callee-saved registers, MXCSR, x87 control word); elsewhere, or with
// -DREPSR_EMU_UCONTEXT, ucontext. The switches tell AddressSanitizer and ThreadSanitizer about the
// stacks (their fiber APIs), so both work across them.
#pragma once

#include <cstddef>

namespace repsr_emu {

struct FiberContext {
  void* sp = nullptr;                // saved stack pointer (x86-64) or ucontext_t* (elsewhere)
  char* stack = nullptr;             // lowest usable address; nullptr: the OS thread's own stack
  size_t stack_size = 0;
  void* asan_fake_stack = nullptr;   // AddressSanitizer's per-fiber state
  void* tsan_fiber = nullptr;        // ThreadSanitizer's fiber (the thread's own for OS stacks)
  void* ucontext = nullptr;          // fallback implementation only
};

// A stack of `bytes` (rounded up to pages) with an inaccessible guard page below it.
void allocate_fiber_stack(FiberContext* f, size_t bytes);
void release_fiber_stack(FiberContext* f);

// Prepares `f` (with a stack) to run entry(arg) when first switched to. entry must never return:
// it ends by switching away with `finished`.
void prepare_fiber(FiberContext* f, void (*entry)(void*), void* arg);

// Before preparing again a fiber that was suspended and then abandoned (never finished): drops
// what the sanitizers know of its old frames.
void forget_fiber_stack(FiberContext* f);

// Binds `f` to the calling OS thread's own stack (the scheduler side).
void adopt_thread_as_fiber(FiberContext* f);

// Suspends `from` and resumes `to`. finished: `from` will never be resumed.
void switch_fiber(FiberContext* from, FiberContext* to, bool finished = false);

// Called first thing by a fiber's entry function: completes the switch that started it and returns
// the scheduler's stack bounds through `from` (AddressSanitizer needs them to switch back).
void fiber_started(FiberContext* from);

}  // namespace repsr_emu
