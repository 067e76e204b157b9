// Shared (header-only) pybind11 helpers: argument conversion with errors that name the argument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core.hpp"

namespace patchloupe::bind {

namespace py = pybind11;

void register_tiling(py::module_& m);
void register_triplets(py::module_& m);
void register_intersect(py::module_& m);
void register_stitch(py::module_& m);
void register_knn(py::module_& m);

// True when a's dtype is exactly T (native byte order).
template <typename T>
bool has_dtype(const py::array& a) {
  return a.dtype().equal(py::dtype::of<T>());
}

// obj as a numpy array (np.asarray for other array-likes); TypeError naming `name` on failure.
inline py::array to_array(py::handle obj, const std::string& name) {
  if (py::isinstance<py::array>(obj)) return py::reinterpret_borrow<py::array>(obj);
  try {
    return py::module_::import("numpy").attr("asarray")(obj);
  } catch (py::error_already_set& e) {
    if (e.matches(PyExc_ValueError) || e.matches(PyExc_TypeError) || e.matches(PyExc_OverflowError)) {
      throw py::type_error(name + " must be a numpy array or array-like: " + std::string(e.what()));
    }
    throw;
  }
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += std::to_string(a.shape(i));
    if (i + 1 < a.ndim() || a.ndim() == 1) s += ",";
    if (i + 1 < a.ndim()) s += " ";
  }
  return s + ")";
}

// a itself when C-contiguous and aligned, else a C-contiguous copy. ValueError naming `name` when
// a has more than kMaxElements elements.
inline py::array c_contiguous(const py::array& a, const std::string& name) {
  if (static_cast<std::int64_t>(a.size()) > kMaxElements) {
    throw py::value_error(name + " is too large (" + std::to_string(a.size()) + " elements)");
  }
  constexpr int kNeed = py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_;
  if ((a.flags() & kNeed) == kNeed) return a;
  return a.attr("copy")();  // ndarray.copy() is C-ordered and aligned, same dtype
}

// Python integer (or numpy integer) -> int64; TypeError for non-integers and bools, ValueError
// when it does not fit in int64.
inline std::int64_t to_int(py::handle obj, const std::string& name) {
  if (PyBool_Check(obj.ptr())) throw py::type_error(name + " must be an integer, got bool");
  PyObject* index = PyNumber_Index(obj.ptr());
  if (index == nullptr) {
    PyErr_Clear();
    throw py::type_error(name + " must be an integer, got " +
                         py::str(py::type::handle_of(obj).attr("__name__")).cast<std::string>());
  }
  const py::object holder = py::reinterpret_steal<py::object>(index);
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(index, &overflow);
  if (overflow != 0) throw py::value_error(name + " is out of range");
  if (value == -1 && PyErr_Occurred()) throw py::error_already_set();
  return static_cast<std::int64_t>(value);
}

// Iterable of between min_len and max_len integers -> vector (TypeError / ValueError naming `name`).
inline std::vector<std::int64_t> to_int_tuple(py::handle obj, const std::string& name, std::size_t min_len,
                                       std::size_t max_len) {
  const std::string want = min_len == max_len ? std::to_string(min_len)
                                              : std::to_string(min_len) + " or " + std::to_string(max_len);
  PyObject* seq = PySequence_Fast(obj.ptr(), "not iterable");
  if (seq == nullptr) {
    PyErr_Clear();
    throw py::type_error(name + " must be a sequence of " + want + " integers");
  }
  const py::object holder = py::reinterpret_steal<py::object>(seq);
  const auto n = static_cast<std::size_t>(PySequence_Fast_GET_SIZE(seq));
  if (n < min_len || n > max_len) {
    throw py::value_error(name + " must have " + want + " entries, got " + std::to_string(n));
  }
  std::vector<std::int64_t> out(n);
  for (std::size_t i = 0; i < n; ++i) {
    out[i] = to_int(PySequence_Fast_GET_ITEM(seq, static_cast<py::ssize_t>(i)), name + "[" + std::to_string(i) + "]");
  }
  return out;
}

// ValueError naming `name` when the C-contiguous float32 array a holds a NaN (GIL released for the scan).
inline void require_no_nan(const py::array& a, const std::string& name) {
  const auto* data = static_cast<const float*>(a.data());
  const auto n = static_cast<std::int64_t>(a.size());
  bool nan = false;
  {
    py::gil_scoped_release release;
    nan = has_nan(data, n);
  }
  if (nan) throw py::value_error(name + " contains NaN");
}

}  // namespace patchloupe::bind
