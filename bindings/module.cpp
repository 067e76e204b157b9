#include <pybind11/pybind11.h>
#include "core.hpp"
namespace py = pybind11;
PYBIND11_MODULE(_native, m) {
  m.doc() = "patchloupe native helpers";
  m.def("version_major", &patchloupe::version_major);
}
