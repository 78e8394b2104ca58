// Fibers for the CUDA emulator (fiber.h).
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REPSR_EMU_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define REPSR_EMU_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define REPSR_EMU_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define REPSR_EMU_TSAN 1
#endif

#if defined(REPSR_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(REPSR_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

#if defined(__x86_64__) && !defined(REPSR_EMU_UCONTEXT)
#define REPSR_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace repsr_emu {
namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "repsr_emu: %s\n", what);
  std::abort();
}

}  // namespace

void allocate_fiber_stack(FiberContext* f, size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  bytes = (bytes + page - 1) / page * page;
  void* base = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) die("cannot map a fiber stack");
  if (mprotect(base, page, PROT_NONE) != 0) die("cannot protect a fiber stack's guard page");
  f->stack = static_cast<char*>(base) + page;
  f->stack_size = bytes;
#if defined(REPSR_EMU_TSAN)
  f->tsan_fiber = __tsan_create_fiber(0);
#endif
}

void release_fiber_stack(FiberContext* f) {
  if (f->stack == nullptr) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  munmap(f->stack - page, f->stack_size + page);
  f->stack = nullptr;
#if defined(REPSR_EMU_TSAN)
  if (f->tsan_fiber != nullptr) __tsan_destroy_fiber(f->tsan_fiber);
  f->tsan_fiber = nullptr;
#endif
#if !defined(REPSR_EMU_ASM_SWITCH)
  delete static_cast<ucontext_t*>(f->ucontext);
  f->ucontext = nullptr;
#endif
}

namespace {
// A fiber that finished never returned from its entry function: that frame's redzones are still
// poisoned at the top of its stack, where the next run starts.
void unpoison_stack_top(FiberContext* f) {
#if defined(REPSR_EMU_ASAN)
  const size_t top = f->stack_size < 8192 ? f->stack_size : 8192;
  ASAN_UNPOISON_MEMORY_REGION(f->stack + f->stack_size - top, top);
#else
  (void)f;
#endif
}
}  // namespace

void forget_fiber_stack(FiberContext* f) {
#if defined(REPSR_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(f->stack, f->stack_size);  // the dropped frames' redzones
  f->asan_fake_stack = nullptr;
#endif
#if defined(REPSR_EMU_TSAN)
  if (f->tsan_fiber != nullptr) __tsan_destroy_fiber(f->tsan_fiber);  // its shadow call stack
  f->tsan_fiber = __tsan_create_fiber(0);
#endif
  (void)f;
}

void adopt_thread_as_fiber(FiberContext* f) {
  f->stack = nullptr;
  f->stack_size = 0;
#if defined(REPSR_EMU_TSAN)
  f->tsan_fiber = __tsan_get_current_fiber();
#endif
#if !defined(REPSR_EMU_ASM_SWITCH)
  if (f->ucontext == nullptr) f->ucontext = new ucontext_t;
#endif
}

#if defined(REPSR_EMU_ASM_SWITCH)

// repsr_emu_swap(void** save_sp, void* new_sp): pushes the callee-saved registers and the SSE/x87
// control words on the current stack, saves the stack pointer, switches to new_sp and pops the
// same frame from there. A fresh fiber's stack holds such a frame whose return address is
// repsr_emu_fiber_start, which calls r13(r12).
extern "C" void repsr_emu_swap(void** save_sp, void* new_sp);
extern "C" void repsr_emu_fiber_start();
asm(R"(
  .text
  .globl repsr_emu_swap
  .type repsr_emu_swap, @function
repsr_emu_swap:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size repsr_emu_swap, .-repsr_emu_swap

  .globl repsr_emu_fiber_start
  .type repsr_emu_fiber_start, @function
repsr_emu_fiber_start:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size repsr_emu_fiber_start, .-repsr_emu_fiber_start
)");

void prepare_fiber(FiberContext* f, void (*entry)(void*), void* arg) {
  unpoison_stack_top(f);
  uint64_t* sp = reinterpret_cast<uint64_t*>(
      (reinterpret_cast<uintptr_t>(f->stack) + f->stack_size) & ~uintptr_t{15});
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  *--sp = reinterpret_cast<uint64_t>(&repsr_emu_fiber_start);  // "return address"; rsp % 16 == 0 after ret
  *--sp = 0;                                                    // rbp
  *--sp = 0;                                                    // rbx
  *--sp = reinterpret_cast<uint64_t>(arg);                      // r12
  *--sp = reinterpret_cast<uint64_t>(entry);                    // r13
  *--sp = 0;                                                    // r14
  *--sp = 0;                                                    // r15
  *--sp = uint64_t{mxcsr} | (uint64_t{fpucw} << 32);
  f->sp = sp;
}

#else  // ucontext

void prepare_fiber(FiberContext* f, void (*entry)(void*), void* arg) {
  unpoison_stack_top(f);
  if (f->ucontext == nullptr) f->ucontext = new ucontext_t;
  ucontext_t* uc = static_cast<ucontext_t*>(f->ucontext);
  if (getcontext(uc) != 0) die("getcontext failed");
  uc->uc_stack.ss_sp = f->stack;
  uc->uc_stack.ss_size = f->stack_size;
  uc->uc_link = nullptr;
  // makecontext passes int arguments: split the pointer.
  const uintptr_t p = reinterpret_cast<uintptr_t>(arg);
  static void (*s_entry)(void*);  // one entry function is used by the emulator
  s_entry = entry;
  makecontext(uc, reinterpret_cast<void (*)()>(+[](unsigned hi, unsigned lo) {
                s_entry(reinterpret_cast<void*>((uintptr_t{hi} << 32) | lo));
              }),
              2, static_cast<unsigned>(p >> 32), static_cast<unsigned>(p & 0xffffffffu));
}

#endif

void switch_fiber(FiberContext* from, FiberContext* to, bool finished) {
#if defined(REPSR_EMU_ASAN)
  __sanitizer_start_switch_fiber(finished ? nullptr : &from->asan_fake_stack, to->stack,
                                 to->stack_size);
#else
  (void)finished;
#endif
#if defined(REPSR_EMU_TSAN)
  __tsan_switch_to_fiber(to->tsan_fiber, 0);
#endif
#if defined(REPSR_EMU_ASM_SWITCH)
  repsr_emu_swap(&from->sp, to->sp);
#else
  swapcontext(static_cast<ucontext_t*>(from->ucontext), static_cast<ucontext_t*>(to->ucontext));
#endif
#if defined(REPSR_EMU_ASAN)
  const void* prev_bottom = nullptr;
  size_t prev_size = 0;
  __sanitizer_finish_switch_fiber(from->asan_fake_stack, &prev_bottom, &prev_size);
#endif
}

void fiber_started(FiberContext* from) {
#if defined(REPSR_EMU_ASAN)
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  from->stack = static_cast<char*>(const_cast<void*>(bottom));
  from->stack_size = size;
#else
  (void)from;
#endif
}

}  // namespace repsr_emu
