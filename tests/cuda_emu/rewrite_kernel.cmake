# Rewrites a .cu file into C++ that runs on the emulator (emu.h), at build time:
#   cmake -DIN=kernels/cuda/rmsnorm.cu -DOUT=<build dir>/rmsnorm_emu.cc -P rewrite_kernel.cmake
# Three rewrites, nothing else changes (line numbers are kept, and a #line directive makes compiler
# and sanitizer messages point into IN):
#   extern __shared__ [__align__(N)] TYPE NAME[];  ->  TYPE* NAME = reinterpret_cast<TYPE*>(::emu::smem());
#   __shared__ TYPE NAME[N], NAME2[M];             ->  static TYPE NAME[N], NAME2[M]; EMU_SHARED(NAME); EMU_SHARED(NAME2);
#   KERNEL<<<grid, block, smem, stream>>>(args)    ->  ::emu::Launch(KERNEL, grid, block, smem, stream)(args)
# Any other __shared__ or <<< left in the file fails the build with a message naming the
# construct, so the tests cannot silently check something other than IN.
cmake_minimum_required(VERSION 3.25)
if(NOT DEFINED IN OR NOT DEFINED OUT)
  message(FATAL_ERROR "usage: cmake -DIN=<file.cu> -DOUT=<file.cc> -P rewrite_kernel.cmake")
endif()
file(READ "${IN}" src)

# 1. Dynamic shared memory: `extern __shared__ [__align__(N)] TYPE NAME[];` becomes a pointer to
# the launch's dynamic shared memory (emu::smem(), 128-byte aligned).
set(extern_re "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_][A-Za-z0-9_ ]*[A-Za-z0-9_]) ([A-Za-z_][A-Za-z0-9_]*)\\[\\];")
string(REGEX REPLACE "${extern_re}" "\\2* \\3 = reinterpret_cast<\\2*>(::emu::smem());" src "${src}")

# 2. Static shared memory: `__shared__ TYPE NAME[dims], NAME2[dims];` (one line) becomes
# `static TYPE NAME[dims], NAME2[dims]; EMU_SHARED(NAME); EMU_SHARED(NAME2);` on the same line:
# one variable per kernel (template instance) shared by the block's fibers, filled with 0xff bytes
# whenever a block starts (emu.h).
set(static_re "__shared__ ([^;\n]*);")
while(src MATCHES "${static_re}")
  set(decl "${CMAKE_MATCH_0}")
  set(body "${CMAKE_MATCH_1}")
  # Declarator names: drop the array bounds, split at the commas, take each piece's last word.
  string(REGEX REPLACE "\\[[^]]*\\]" "" names "${body}")
  string(REPLACE "," ";" names "${names}")
  set(regs "")
  foreach(piece IN LISTS names)
    if(NOT piece MATCHES "([A-Za-z_][A-Za-z0-9_]*)[ \t]*$")
      message(FATAL_ERROR "rewrite_kernel: cannot parse the __shared__ declaration '${decl}' in ${IN}")
    endif()
    string(APPEND regs " EMU_SHARED(${CMAKE_MATCH_1});")
  endforeach()
  string(REPLACE "${decl}" "static ${body};${regs}" src "${src}")
endwhile()
if(src MATCHES "__shared__")
  message(FATAL_ERROR "rewrite_kernel: ${IN} declares __shared__ memory the emulator "
                      "(tests/cuda_emu) cannot place; extend tests/cuda_emu/rewrite_kernel.cmake")
endif()

# 3. Launches. The kernel is an identifier with optional template arguments; the launch
# configuration may not contain '>' (no comparisons or '->' inside <<< >>>). The whitespace between
# the kernel and <<< is kept, and so are the line breaks.
set(launch_re "([A-Za-z_][A-Za-z0-9_:]*(<[^<>;]*>)?)([ \t\r\n]*)<<<([^>]*)>>>([ \t\r\n]*)\\(")
string(REGEX REPLACE "${launch_re}" "::emu::Launch(\\1,\\3\\4)\\5(" src "${src}")
if(src MATCHES "<<<")
  message(FATAL_ERROR "rewrite_kernel: ${IN} has a kernel launch the emulator (tests/cuda_emu) "
                      "cannot rewrite (expected 'kernel<<<grid, block, smem, stream>>>(args)' with no '>' "
                      "inside the <<< >>>); extend "
                      "tests/cuda_emu/rewrite_kernel.cmake")
endif()

file(WRITE "${OUT}.tmp"
  "// Generated from ${IN} by tests/cuda_emu/rewrite_kernel.cmake: do not edit.\n"
  "#include \"tests/cuda_emu/emu.h\"\n"
  "#line 1 \"${IN}\"\n"
  "${src}")
# Only touch OUT when it changes (no needless recompiles).
file(COPY_FILE "${OUT}.tmp" "${OUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUT}.tmp")
