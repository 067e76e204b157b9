// patchloupe._native: pybind11 module entry point. Registration lives in register_*.cpp.
#include <pybind11/pybind11.h>

#include "common.hpp"
#include "core.hpp"

PYBIND11_MODULE(_native, m) {
  m.doc() =
      "patchloupe native helpers (C++17): tile/untile an image into a patch grid, neighbour triplets, "
      "per-direction verdict/mask intersection, bilinear stitching of patch masks and the k nearest positions of "
      "an image outside a window (the self-reference scorer). Each function has a "
      "numpy twin of the same name and signature in patchloupe._twins.";
  m.attr("VERSION_MAJOR") = patchloupe::kVersionMajor;
  m.attr("MAX_ELEMENTS") = patchloupe::kMaxElements;
  patchloupe::bind::register_tiling(m);
  patchloupe::bind::register_triplets(m);
  patchloupe::bind::register_intersect(m);
  patchloupe::bind::register_stitch(m);
  patchloupe::bind::register_knn(m);
}
