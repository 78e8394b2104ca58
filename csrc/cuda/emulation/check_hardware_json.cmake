# ctest hardware_counters_current: the committed benchmarks/hardware_counters_emulated.json (what a
# GPU run's Nsight Compute counters are compared with, benchmarks/hardware_counters.py) must be
# what the kernels give now. Regenerates it with test_cuda_emulated --hardware-json and compares.
# Arguments: -DEXE=test_cuda_emulated_plain -DREF=committed file -DOUT=fresh file.
execute_process(COMMAND "${EXE}" --hardware-json "${OUT}" RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} --hardware-json failed (${rc}):\n${log}")
endif()
execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${OUT}" "${REF}" RESULT_VARIABLE differs)
if(NOT differs EQUAL 0)
  message(FATAL_ERROR "${REF} is stale: the kernels' counts changed. Regenerate it:\n"
                      "  ${EXE} --hardware-json ${REF}")
endif()
message(STATUS "hardware counters reference current")
