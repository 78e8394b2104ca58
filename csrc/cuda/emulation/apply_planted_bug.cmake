# cmake -DBUG=<name> -DSRC=<repo>/csrc -DDEST=<dir> -P apply_planted_bug.cmake
# Copies csrc/cuda (and the fused_sr.h it includes) to DEST and plants bug BUG of
# planted_bugs.cmake: its text must occur exactly once, so a control cannot silently go stale
# when the kernels change.
include(${CMAKE_CURRENT_LIST_DIR}/planted_bugs.cmake)
if(NOT DEFINED BUG_${BUG}_FILE)
  message(FATAL_ERROR "no planted bug named '${BUG}' in planted_bugs.cmake")
endif()
file(REMOVE_RECURSE ${DEST})
file(GLOB sources ${SRC}/cuda/*.cu ${SRC}/cuda/*.cuh)
file(COPY ${sources} DESTINATION ${DEST}/cuda)
file(COPY ${SRC}/fused_sr.h DESTINATION ${DEST})
set(target ${DEST}/cuda/${BUG_${BUG}_FILE})
file(READ ${target} text)
string(LENGTH "${text}" before)
string(LENGTH "${BUG_${BUG}_OLD}" old_length)
string(REPLACE "${BUG_${BUG}_OLD}" "" stripped "${text}")
string(LENGTH "${stripped}" after)
math(EXPR occurrences "(${before} - ${after}) / ${old_length}")
if(NOT occurrences EQUAL 1)
  message(FATAL_ERROR "planted bug '${BUG}': its text occurs ${occurrences} times in csrc/cuda/${BUG_${BUG}_FILE} "
                      "(expected once); update planted_bugs.cmake to the kernel's current code")
endif()
string(REPLACE "${BUG_${BUG}_OLD}" "${BUG_${BUG}_NEW}" text "${text}")
file(WRITE ${target} "${text}")
