// The dashboard's page, script, style and vendored chart library (coordinator/web), embedded in
// the binary at build time by coordinator/web/embed.cmake, so the coordinator serves them
// without a file tree or a network fetch.
#pragma once

#include <cstddef>
#include <span>

namespace grove::coordinator {

struct WebAsset {
  const char* path;          // "/" for index.html, else "/static/<file under coordinator/web>"
  const char* content_type;  // with charset
  const unsigned char* data;
  size_t size;
};

std::span<const WebAsset> WebAssets();

}  // namespace grove::coordinator
