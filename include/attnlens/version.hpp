// attnlens version. CMake reads these three macros; keep them on lines of their own.
#pragma once

#define ATTNLENS_VERSION_MAJOR 0
#define ATTNLENS_VERSION_MINOR 1
#define ATTNLENS_VERSION_PATCH 0

#define ATTNLENS_VERSION \
  (ATTNLENS_VERSION_MAJOR * 10000 + ATTNLENS_VERSION_MINOR * 100 + ATTNLENS_VERSION_PATCH)
