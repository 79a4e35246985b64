# cmake -P script: builds and runs tests/package/consumer in MODE find_package (after
# installing the attnlens build tree to a private prefix) or add_subdirectory.
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "command failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  message(STATUS "${out}")
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(args -S ${CONSUMER_SOURCE} -B ${WORK_DIR}/build -G ${GENERATOR}
    -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_BUILD_TYPE=Release -DCONSUMER_MODE=${MODE})
if(MODE STREQUAL "find_package")
  run(${CMAKE_COMMAND_PATH} --install ${ATTNLENS_BUILD_DIR} --prefix ${WORK_DIR}/prefix)
  list(APPEND args -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix)
else()
  list(APPEND args -DATTNLENS_SOURCE_DIR=${ATTNLENS_SOURCE_DIR})
endif()
run(${CMAKE_COMMAND_PATH} ${args})
run(${CMAKE_COMMAND_PATH} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer)
run(${WORK_DIR}/build/consumer_threads)
run(${WORK_DIR}/build/consumer_openmp)  # the old name of attnlens::threads
run(${WORK_DIR}/build/consumer_data)  # attnlens::data: the tests need zlib, so the package has it
run(${WORK_DIR}/build/consumer_plot)  # attnlens::plot: the tests need PLplot, so the package has it
if(MODE STREQUAL "find_package")  # the installed package has attnlens::compiled
  run(${WORK_DIR}/build/consumer_compiled)
  run(${WORK_DIR}/build/consumer_stack)
endif()
