# Rewrites a .cu file into C++ that runs on the emulator (emu.h), at build time:
#   cmake -DIN=kernels/cuda/attention_tc.cu -DOUT=<build dir>/attention_tc_emu.cc -P rewrite_kernel.cmake
# Two rewrites, nothing else changes (line numbers are kept, and a #line directive makes compiler
# and sanitizer messages point into IN):
#   extern __shared__ __align__(N) unsigned char NAME[];  ->  unsigned char* NAME = ::emu::smem();
#   KERNEL<<<grid, block, smem, stream>>>(args)           ->  ::emu::Launch(KERNEL, grid, block, smem, stream)(args)
# Any other __shared__ or <<< left in the file, or a file with neither, fails the build with a
# message naming the construct, so the test cannot silently check something other than IN.
cmake_minimum_required(VERSION 3.25)
if(NOT DEFINED IN OR NOT DEFINED OUT)
  message(FATAL_ERROR "usage: cmake -DIN=<file.cu> -DOUT=<file.cc> -P rewrite_kernel.cmake")
endif()
file(READ "${IN}" src)

function(require what pattern text)
  if(NOT text MATCHES "${pattern}")
    message(FATAL_ERROR "rewrite_kernel: no ${what} found in ${IN}: the emulator test "
                        "(tests/cuda_emu) relies on it; update tests/cuda_emu/rewrite_kernel.cmake")
  endif()
endfunction()

# 1. Dynamic shared memory.
set(shared_re "extern __shared__ (__align__\\([0-9]+\\) )?unsigned char ([A-Za-z_][A-Za-z0-9_]*)\\[\\];")
require("'extern __shared__ __align__(N) unsigned char NAME[];' declaration" "${shared_re}" "${src}")
string(REGEX REPLACE "${shared_re}" "unsigned char* \\2 = ::emu::smem();" src "${src}")
if(src MATCHES "__shared__")
  message(FATAL_ERROR "rewrite_kernel: ${IN} declares __shared__ memory other than "
                      "'extern __shared__ __align__(N) unsigned char NAME[];', which the emulator "
                      "(tests/cuda_emu) cannot place; extend tests/cuda_emu/rewrite_kernel.cmake")
endif()

# 2. Launches. The kernel is an identifier with optional template arguments; the launch
# configuration may not contain '>' (no comparisons or '->' inside <<< >>>). The whitespace between
# the kernel and <<< is kept, and so are the line breaks.
set(launch_re "([A-Za-z_][A-Za-z0-9_:]*(<[^<>;]*>)?)([ \t\r\n]*)<<<([^>]*)>>>([ \t\r\n]*)\\(")
require("'kernel<<<grid, block, smem, stream>>>(args)' launch" "${launch_re}" "${src}")
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
