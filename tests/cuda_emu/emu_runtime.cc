// The fiber scheduler behind emu.h and the CUDA runtime calls that kernels/cuda, core/tensor.cc,
// model/cuda and the GPU tests make, defined here in place of libcudart (the emulated binaries do
// not link it).
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <random>

#include "tests/cuda_emu/emu.h"

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace emu {

void fail(const char* file, int line, const char* what) {
  std::fprintf(stderr, "emu: %s:%d: %s (thread %u of block (%u, %u, %u))\n", file, line, what,
               threadIdx.x, blockIdx.x, blockIdx.y, blockIdx.z);
  std::fflush(stderr);
  std::abort();
}

namespace {

// AddressSanitizer must be told about every switch between stacks.
void start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#ifdef EMU_ASAN
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}
void finish_switch(void* fake_stack_save, const void** bottom_old, size_t* size_old) {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake_stack_save, bottom_old, size_old);
#else
  (void)fake_stack_save, (void)bottom_old, (void)size_old;
#endif
}

// Switching between fibers. On x86-64 a hand-written switch saves and restores the callee-saved
// registers and the SSE / x87 control words on the stack: no system call, where swapcontext makes
// two (the signal mask) and costs ~10x more; the GPU tests start millions of fibers. Elsewhere,
// ucontext.
#if defined(__x86_64__)
extern "C" void emu_switch_context(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl emu_switch_context
  .type emu_switch_context, @function
emu_switch_context:
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
  .size emu_switch_context, .-emu_switch_context
  .section .note.GNU-stack, "", @progbits
  .text
)");
struct Context {
  void* sp = nullptr;
};
void switch_context(Context& from, Context& to) {
  emu_switch_context(&from.sp, to.sp);
}
// A context that starts entry() on [stack, stack + bytes) when switched to (entry never returns).
void init_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  // What emu_switch_context pops: control words, six registers, then entry as the return address.
  // At entry the stack pointer is 8 mod 16, as after a call; a null return address above it.
  auto* top =
      reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t{15});
  uint64_t* sp = top - 2;  // sp[1]: null return address of entry
  sp[1] = 0;
  sp[0] = reinterpret_cast<uint64_t>(entry);
  sp -= 7;
  std::memset(sp, 0, 7 * sizeof(uint64_t));
  const uint32_t mxcsr = 0x1f80;  // defaults: all exceptions masked, round to nearest
  const uint16_t fpucw = 0x37f;
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 2);
  c.sp = sp;
}
#else
struct Context {
  ucontext_t uc;
};
void switch_context(Context& from, Context& to) {
  swapcontext(&from.uc, &to.uc);
}
__attribute__((noinline)) void init_context(Context& c, char* stack, size_t bytes,
                                            void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
  // swapcontext does not read uc_stack, but AddressSanitizer's interceptor clears the shadow of
  // the whole stack it names at every switch (slow, and it would erase live redzones).
  c.uc.uc_stack.ss_sp = nullptr;
  c.uc.uc_stack.ss_size = 0;
}
#endif

// Kernel frames are small (fragments and a few scalars); the guard page below each stack turns an
// overflow into a crash.
constexpr size_t kStackBytes = size_t{256} << 10;

struct Fiber {
  Context ctx;
  char* stack = nullptr;  // kStackBytes, above a guard page
  uint3 tid{};
  int linear = 0;  // tid as a linear index
  bool done = false;
  void* fake_stack = nullptr;  // AddressSanitizer's, while switched out
  // Where the last run left AddressSanitizer poison: the frames of a finished fiber have returned
  // (and cleared their redzones) except fiber_main's and the final switch's, near the top.
  char* poisoned_from = nullptr;
};

struct Scheduler {
  std::vector<Fiber> fibers;  // grows to the largest block seen; stacks are reused
  // Fibers that can run, per warp, and how the next one is picked: in a warp-sequential epoch the
  // first warp in `order` with a runnable lane runs (so whole warps run one after another up to
  // the next __syncthreads), otherwise any runnable fiber. Redrawn whenever __syncthreads opens.
  std::vector<std::vector<int>> runnable;
  int n_runnable = 0;
  bool warp_sequential = false;
  std::vector<int> order;
  int current = -1;  // running fiber, -1 on the scheduler's own stack
  int finished = 0;
  Context main;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  const std::function<void()>* body = nullptr;
  std::mt19937_64 rng{1};
  uint64_t seed = 1, launches = 0;
  bool seeded = false;
};
Scheduler S;

// From a fiber to the scheduler; returns when the scheduler resumes this fiber.
void switch_to_scheduler() {
  Fiber& f = S.fibers[S.current];
  start_switch(&f.fake_stack, S.main_bottom, S.main_size);
  switch_context(f.ctx, S.main);
  finish_switch(f.fake_stack, &S.main_bottom, &S.main_size);
}

void fiber_main() {
  Fiber& f = S.fibers[S.current];
  finish_switch(nullptr, &S.main_bottom, &S.main_size);
  (*S.body)();
  f.done = true;
  ++S.finished;
  f.poisoned_from = static_cast<char*>(__builtin_frame_address(0)) - (size_t{16} << 10);
  start_switch(nullptr, S.main_bottom, S.main_size);  // the fiber's fake stack ends here
  switch_context(f.ctx, S.main);
  fail(__FILE__, __LINE__, "a finished fiber was resumed");
}

void resume(int i) {
  Fiber& f = S.fibers[i];
  S.current = i;
  threadIdx = f.tid;
  current_tid = f.linear;
  void* fake_stack = nullptr;
  start_switch(&fake_stack, f.stack, kStackBytes);
  switch_context(S.main, f.ctx);
  finish_switch(fake_stack, nullptr, nullptr);
  S.current = -1;
}

void deadlock(const Block& blk, int n) {
  std::fprintf(stderr,
               "emu: deadlock in block (%u, %u, %u): %d of %d threads finished, %d waiting at "
               "__syncthreads",
               blockIdx.x, blockIdx.y, blockIdx.z, S.finished, n, blk.bar.arrived);
  for (size_t w = 0; w < blk.warps.size(); ++w)
    if (blk.warps[w].bar.arrived > 0)
      std::fprintf(stderr, ", %d of warp %zu at a warp barrier", blk.warps[w].bar.arrived, w);
  std::fprintf(stderr,
               " (a barrier in divergent code, or threads that returned while others wait)\n");
  std::fflush(stderr);
  std::abort();
}

// Sets fiber f up to run the kernel body from the start.
void prepare(Fiber& f, unsigned t, dim3 block) {
#ifdef EMU_ASAN
  // Left over from the previous run (the whole stack if it did not finish).
  char* from = f.poisoned_from != nullptr ? std::max(f.poisoned_from, f.stack) : f.stack;
  ASAN_UNPOISON_MEMORY_REGION(from, f.stack + kStackBytes - from);
  f.poisoned_from = f.stack;
#endif
  init_context(f.ctx, f.stack, kStackBytes, fiber_main);
  f.tid = uint3{t % block.x, t / block.x % block.y, t / (block.x * block.y)};
  f.linear = static_cast<int>(t);
  f.done = false;
  f.fake_stack = nullptr;
}

void reset(Barrier& b, int expected) {
  b.expected = expected;
  b.arrived = 0;
  b.waiters.clear();
}

void make_runnable(int fiber) {
  S.runnable[fiber / 32].push_back(fiber);
  ++S.n_runnable;
}

void new_epoch() {
  S.warp_sequential = S.rng() % 2 == 0;
  std::shuffle(S.order.begin(), S.order.end(), S.rng);
}

int pick() {
  size_t w = 0;
  if (S.warp_sequential) {
    for (int o : S.order)
      if (!S.runnable[o].empty()) {
        w = o;
        break;
      }
  } else {
    size_t k = S.rng() % S.n_runnable;
    while (k >= S.runnable[w].size()) k -= S.runnable[w++].size();
  }
  std::vector<int>& r = S.runnable[w];
  const size_t k = S.rng() % r.size();
  const int fiber = r[k];
  r[k] = r.back();
  r.pop_back();
  --S.n_runnable;
  return fiber;
}

void run_block(Block& blk, int n, dim3 block) {
  const int warps = n / 32;
  S.runnable.assign(warps, {});
  S.n_runnable = 0;
  S.order.resize(warps);
  for (int w = 0; w < warps; ++w) S.order[w] = w;
  for (int t = 0; t < n; ++t) {
    prepare(S.fibers[t], static_cast<unsigned>(t), block);
    make_runnable(t);
  }
  S.finished = 0;
  new_epoch();
  while (S.n_runnable > 0) resume(pick());
  if (S.finished != n) deadlock(blk, n);
}

// cudaFuncSetAttribute's MaxDynamicSharedMemorySize per kernel, and the sticky launch error.
std::map<const void*, int>& smem_limits() {
  static std::map<const void*, int> m;
  return m;
}
// Per host thread, as the runtime's sticky error is.
thread_local cudaError_t last_error = cudaSuccess;
// Static __shared__ variables seen so far (register_shared).
std::vector<std::pair<void*, size_t>>& shared_statics() {
  static std::vector<std::pair<void*, size_t>> v;
  return v;
}
// Live device allocations: start -> bytes.
// Several host threads may use the runtime at once (the thread transport's ranks, each with its
// own stream): the allocation registry has a lock, and launches take launch_mutex() for the whole
// grid (one grid runs at a time, on the launching thread; the scheduler, the fiber stacks, the
// block/thread globals of emu.h, the static __shared__ variables and the shared-memory limits are
// only touched under it).
std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}
// True on a thread while it runs a grid (a launch from inside a kernel is an error, not a
// deadlock on launch_mutex()).
thread_local bool in_grid = false;
std::map<uintptr_t, size_t>& device_memory() {
  static std::map<uintptr_t, size_t> m;
  return m;
}
constexpr int kDefaultSmem = 48 << 10, kOptinSmem = 227 << 10;  // sm_90

}  // namespace

bool register_shared(void* p, size_t bytes) {
  std::memset(p, 0xff, bytes);
  shared_statics().emplace_back(p, bytes);
  return true;
}

bool is_device_pointer(const void* p) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  const auto a = reinterpret_cast<uintptr_t>(p);
  const auto& m = device_memory();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a <= it->first + it->second;
}

bool is_device_range(const void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  const auto a = reinterpret_cast<uintptr_t>(p);
  const auto& m = device_memory();
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  return a + bytes <= it->first + it->second;
}

AsDevice::AsDevice(const void* p, size_t bytes) : p_(p) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  device_memory()[reinterpret_cast<uintptr_t>(p)] = bytes;
}
AsDevice::~AsDevice() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  device_memory().erase(reinterpret_cast<uintptr_t>(p_));
}

void set_schedule_seed(uint64_t seed) {
  std::unique_lock<std::mutex> lock(launch_mutex(), std::defer_lock);
  if (!in_grid) lock.lock();  // run_grid calls it with the lock held
  // GROVE_EMU_SEED=n explores other schedules (0 or unset: the tests' own).
  const char* extra = std::getenv("GROVE_EMU_SEED");
  S.seed = seed + (extra != nullptr ? std::strtoull(extra, nullptr, 10) * 7919 : 0);
  S.launches = 0;
  S.seeded = true;
}

void arrive_and_wait(Barrier& b) {
  if (S.current < 0) fail(__FILE__, __LINE__, "a barrier outside a kernel");
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    for (int w : b.waiters) make_runnable(w);
    b.waiters.clear();
    if (&b == &current_block->bar) new_epoch();
    return;
  }
  b.waiters.push_back(S.current);
  switch_to_scheduler();
}

void run_grid(const void* kernel, dim3 grid, dim3 block, size_t smem_bytes,
              const std::function<void()>& body) {
  if (in_grid) fail(__FILE__, __LINE__, "a launch from inside a kernel");
  std::lock_guard<std::mutex> lock(launch_mutex());
  in_grid = true;
  struct LeaveGrid {
    ~LeaveGrid() { in_grid = false; }
  } leave;
  auto it = smem_limits().find(kernel);
  const size_t smem_limit = it == smem_limits().end() ? kDefaultSmem : it->second;
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 ||
      grid.z > 65535 || block.x == 0 || block.y == 0 || block.z == 0 || block.x > 1024 ||
      block.y > 1024 || block.z > 64 || threads > 1024) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (smem_bytes > smem_limit) {
    last_error = cudaErrorInvalidValue;
    return;
  }
  // The emulation's own limit (not the device's): whole warps.
  EMU_CHECK(threads % 32 == 0);

  const int n = static_cast<int>(threads);
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  while (S.fibers.size() < static_cast<size_t>(n)) {
    void* mem = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    EMU_CHECK(mem != MAP_FAILED);
    EMU_CHECK(mprotect(mem, page, PROT_NONE) == 0);
    S.fibers.emplace_back();
    S.fibers.back().stack = static_cast<char*>(mem) + page;
  }
  if (!S.seeded) set_schedule_seed(1);  // tests that never choose (GROVE_EMU_SEED still applies)
  S.rng.seed(S.seed * 1000003 + S.launches++);
  S.body = &body;
  Block blk;
  blk.warps.resize(n / 32);
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        // One Block reused for the launch (its warps' exchange buffers are ~7 KiB each); every
        // barrier starts empty.
        reset(blk.bar, n);
        for (Warp& w : blk.warps) reset(w.bar, 32);
        // At least one byte, so that the pointer is distinct and any access to it is reported.
        const size_t bytes = std::max<size_t>(smem_bytes, 1);
        blk.smem = static_cast<unsigned char*>(::operator new (bytes, std::align_val_t{128}));
        std::memset(blk.smem, 0xff, bytes);
        current_block = &blk;
        for (const auto& [p, bytes] : shared_statics()) std::memset(p, 0xff, bytes);
        run_block(blk, n, block);
        current_block = nullptr;
        ::operator delete (blk.smem, std::align_val_t{128});
      }
  S.body = nullptr;
}

}  // namespace emu

// ---- CUDA runtime -----------------------------------------------------------------------------
// What kernels/cuda, core/tensor.cc, model/cuda and the GPU tests call; anything else fails to
// link. One device (0); streams and events are accepted and ignored, everything is synchronous.
// Errors are returned as the runtime would; misuse the runtime might not catch (a host pointer
// given as the device side of a copy) is reported on stderr and returned as cudaErrorInvalidValue.

namespace {

cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) emu::last_error = e;
  return e;
}

cudaError_t not_device(const char* call, const char* what, const void* p) {
  std::fprintf(stderr, "emu: %s: %s %p is not device memory\n", call, what, p);
  return set_error(cudaErrorInvalidValue);
}
cudaError_t is_device(const char* call, const char* what, const void* p) {
  std::fprintf(stderr, "emu: %s: %s %p is device memory, host memory expected\n", call, what, p);
  return set_error(cudaErrorInvalidValue);
}

}  // namespace

cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::last_error;
  emu::last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  return emu::last_error;
}
const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess:
      return "cudaSuccess";
    case cudaErrorInvalidValue:
      return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration:
      return "cudaErrorInvalidConfiguration";
    case cudaErrorMemoryAllocation:
      return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice:
      return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDevicePointer:
      return "cudaErrorInvalidDevicePointer";
    default:
      return "cudaError (emulated runtime)";
  }
}
const char* cudaGetErrorString(cudaError_t error) {
  return cudaGetErrorName(error);
}

// ---- Device -----------------------------------------------------------------------------------
cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice);
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return set_error(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "CUDA emulator (CPU, tests/cuda_emu)");
  prop->major = 9;  // the sm_90 limits the launches enforce
  prop->minor = 0;
  prop->totalGlobalMem = size_t{80} << 30;
  prop->sharedMemPerBlock = emu::kDefaultSmem;
  prop->sharedMemPerBlockOptin = emu::kOptinSmem;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = 1024;
  prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
  prop->multiProcessorCount = 132;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = emu::kOptinSmem;
      return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
      *value = 132;
      return cudaSuccess;
    default:
      return set_error(cudaErrorInvalidValue);
  }
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > emu::kOptinSmem)
    return set_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(emu::launch_mutex());
  emu::smem_limits()[func] = value;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  return cudaSuccess;
}

// ---- Streams and events (work is done when it is issued) ----------------------------------------
// Distinct non-null handles; never dereferenced.
cudaError_t cudaStreamCreate(cudaStream_t* stream) {
  *stream = reinterpret_cast<cudaStream_t>(new char);
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  return cudaStreamCreate(stream);
}
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  delete reinterpret_cast<char*>(stream);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) {
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = reinterpret_cast<cudaEvent_t>(new char);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned) {
  return cudaEventCreate(event);
}
cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<char*>(event);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) {
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t) {
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t) {
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.f;  // no timing under emulation
  return cudaSuccess;
}

// ---- Memory -----------------------------------------------------------------------------------
// Device memory is host memory, 256-byte aligned like cudaMalloc's, filled with 0xff bytes (NaN as
// fp32 and bf16) so that reading what was never written shows; registered for the pointer checks.
cudaError_t cudaMalloc(void** ptr, size_t size) {
  *ptr = ::operator new (std::max<size_t>(size, 1), std::align_val_t{256}, std::nothrow);
  if (*ptr == nullptr) return set_error(cudaErrorMemoryAllocation);
  std::memset(*ptr, 0xff, size);
  std::lock_guard<std::mutex> lock(emu::registry_mutex());
  emu::device_memory()[reinterpret_cast<uintptr_t>(*ptr)] = size;
  return cudaSuccess;
}
cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(emu::registry_mutex());
    auto& m = emu::device_memory();
    auto it = m.find(reinterpret_cast<uintptr_t>(ptr));
    if (it == m.end()) return not_device("cudaFree", "pointer", ptr);
    m.erase(it);
  }
  ::operator delete (ptr, std::align_val_t{256});
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** ptr, size_t size, cudaStream_t) {
  return cudaMalloc(ptr, size);
}
cudaError_t cudaFreeAsync(void* ptr, cudaStream_t) {
  return cudaFree(ptr);
}
cudaError_t cudaMemset(void* ptr, int value, size_t count) {
  if (count == 0) return cudaSuccess;
  if (!emu::is_device_range(ptr, count)) return not_device("cudaMemset", "range at", ptr);
  std::memset(ptr, value, count);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* ptr, int value, size_t count, cudaStream_t) {
  return cudaMemset(ptr, value, count);
}
// The kind is checked against the registry: the device side of a copy must be device memory, and
// the host side must not be (a swapped kind or a device pointer used as host memory would work
// here, where both are host memory, and fail on the device).
cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  const bool dst_dev = emu::is_device_range(dst, count), src_dev = emu::is_device_range(src, count);
  const bool dst_any = emu::is_device_pointer(dst), src_any = emu::is_device_pointer(src);
  switch (kind) {
    case cudaMemcpyHostToDevice:
      if (!dst_dev) return not_device("cudaMemcpy HostToDevice", "destination range at", dst);
      if (src_any) return is_device("cudaMemcpy HostToDevice", "source", src);
      break;
    case cudaMemcpyDeviceToHost:
      if (!src_dev) return not_device("cudaMemcpy DeviceToHost", "source range at", src);
      if (dst_any) return is_device("cudaMemcpy DeviceToHost", "destination", dst);
      break;
    case cudaMemcpyDeviceToDevice:
      if (!dst_dev) return not_device("cudaMemcpy DeviceToDevice", "destination range at", dst);
      if (!src_dev) return not_device("cudaMemcpy DeviceToDevice", "source range at", src);
      break;
    case cudaMemcpyHostToHost:
      if (dst_any || src_any)
        return is_device("cudaMemcpy HostToHost", "an operand at", src_any ? src : dst);
      break;
    case cudaMemcpyDefault:
      if ((dst_any && !dst_dev) || (src_any && !src_dev))
        return not_device("cudaMemcpy Default", "range past an allocation at", dst_any ? dst : src);
      break;
    default:
      return set_error(cudaErrorInvalidMemcpyDirection);
  }
  std::memmove(dst, src, count);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                            cudaStream_t) {
  return cudaMemcpy(dst, src, count, kind);
}
// Row by row, each row checked as a cudaMemcpy of `width` bytes.
cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, cudaMemcpyKind kind) {
  if (width > dpitch || width > spitch) return set_error(cudaErrorInvalidPitchValue);
  for (size_t i = 0; i < height; ++i) {
    const cudaError_t e = cudaMemcpy(static_cast<char*>(dst) + i * dpitch,
                                     static_cast<const char*>(src) + i * spitch, width, kind);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}
cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy2D(dst, dpitch, src, spitch, width, height, kind);
}
