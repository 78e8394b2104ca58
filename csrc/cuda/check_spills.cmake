# ctest check_cuda_spills: compiles every CUDA kernel source with nvcc for the architectures the
# kernels are tuned for and fails if ptxas reports register spills (the float32 kernel sits at its
# 128-register cap; a spill there costs local-memory traffic in the inner loop).
#   cmake -DNVCC=/usr/local/cuda/bin/nvcc -DCSRC=<repo>/csrc -P check_spills.cmake
file(GLOB sources ${CSRC}/cuda/*.cu)
set(failed "")
foreach(arch 80 90)
  foreach(src ${sources})
    execute_process(
      COMMAND ${NVCC} -std=c++17 -O3 --use_fast_math --expt-relaxed-constexpr -I${CSRC}
              -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__
              -gencode arch=compute_${arch},code=sm_${arch} --resource-usage -c ${src} -o /dev/null
      RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
    get_filename_component(name ${src} NAME)
    if(NOT rc EQUAL 0)
      message(SEND_ERROR "${name} sm_${arch}: nvcc failed\n${err}")
      continue()
    endif()
    string(REGEX MATCHALL "[0-9]+ bytes spill stores" spills "${err}${out}")
    foreach(s ${spills})
      if(NOT s MATCHES "^0 bytes")
        list(APPEND failed "${name} sm_${arch}: ${s}")
      endif()
    endforeach()
    string(REGEX MATCHALL "Used [0-9]+ registers" regs "${err}${out}")
    message(STATUS "${name} sm_${arch}: ${regs}")
  endforeach()
endforeach()
if(failed)
  message(FATAL_ERROR "register spills: ${failed}")
endif()
message(STATUS "no register spills")
