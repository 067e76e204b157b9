// intersect_maps / intersect_masks bindings.
#include "common.hpp"
#include "intersect.hpp"

namespace patchloupe::bind {

namespace {

py::array intersect_maps_py(const py::handle& verdicts_obj, const py::handle& valid_obj) {
  py::array verdicts = to_array(verdicts_obj, "verdicts");
  const bool is_bool = has_dtype<bool>(verdicts);
  if (!is_bool && !has_dtype<float>(verdicts)) {
    throw py::type_error("verdicts must have dtype bool or float32, got " + dtype_str(verdicts));
  }
  if (verdicts.ndim() != 3) {
    throw py::value_error("verdicts must be 3-D (D, rows, cols), got shape " + shape_str(verdicts));
  }
  if (verdicts.size() == 0) throw py::value_error("verdicts must be non-empty, got shape " + shape_str(verdicts));
  py::array valid = to_array(valid_obj, "valid");
  if (!has_dtype<bool>(valid)) throw py::type_error("valid must have dtype bool, got " + dtype_str(valid));
  if (valid.ndim() != 3 || valid.shape(0) != verdicts.shape(0) || valid.shape(1) != verdicts.shape(1) ||
      valid.shape(2) != verdicts.shape(2)) {
    throw py::value_error("valid must have the shape of verdicts " + shape_str(verdicts) + ", got " +
                          shape_str(valid));
  }
  verdicts = c_contiguous(verdicts, "verdicts");
  valid = c_contiguous(valid, "valid");
  const std::int64_t directions = verdicts.shape(0);
  const std::int64_t n = verdicts.shape(1) * verdicts.shape(2);
  const auto* ok = static_cast<const std::uint8_t*>(valid.data());
  if (is_bool) {
    py::array_t<bool> out({verdicts.shape(1), verdicts.shape(2)});
    const auto* v = static_cast<const std::uint8_t*>(verdicts.data());
    auto* dst = reinterpret_cast<std::uint8_t*>(out.mutable_data());
    {
      py::gil_scoped_release release;
      intersect_maps_bool(v, ok, dst, directions, n);
    }
    return std::move(out);
  }
  py::array_t<float> out({verdicts.shape(1), verdicts.shape(2)});
  const auto* v = static_cast<const float*>(verdicts.data());
  float* dst = out.mutable_data();
  bool no_nan = true;
  {
    py::gil_scoped_release release;
    no_nan = intersect_maps_float(v, ok, dst, directions, n);
  }
  if (!no_nan) throw py::value_error("verdicts contains NaN");
  return std::move(out);
}

py::array_t<float> intersect_masks_py(const py::handle& masks_obj) {
  py::array masks = to_array(masks_obj, "masks");
  if (!has_dtype<float>(masks)) throw py::type_error("masks must have dtype float32, got " + dtype_str(masks));
  if (masks.ndim() != 4) {
    throw py::value_error("masks must be 4-D (D, P, mh, mw), got shape " + shape_str(masks));
  }
  if (masks.size() == 0) throw py::value_error("masks must be non-empty, got shape " + shape_str(masks));
  masks = c_contiguous(masks, "masks");
  const std::int64_t directions = masks.shape(0);
  const std::int64_t n = masks.shape(1) * masks.shape(2) * masks.shape(3);
  py::array_t<float> out({masks.shape(1), masks.shape(2), masks.shape(3)});
  const auto* src = static_cast<const float*>(masks.data());
  float* dst = out.mutable_data();
  bool no_nan = true;
  {
    py::gil_scoped_release release;
    no_nan = intersect_masks(src, dst, directions, n);
  }
  if (!no_nan) throw py::value_error("masks contains NaN");
  return out;
}

}  // namespace

void register_intersect(py::module_& m) {
  m.def("intersect_maps", &intersect_maps_py, py::arg("verdicts"), py::arg("valid"),
        "Combine per-direction patch verdicts (D, rows, cols) bool/float32 with a same-shape bool mask of\n"
        "which directions could predict each patch -> (rows, cols): AND (bool) / min (float) over the valid\n"
        "directions; False / 0.0 where none is valid.");
  m.def("intersect_masks", &intersect_masks_py, py::arg("masks"),
        "Element-wise min over directions of float32 masks (D, P, mh, mw) -> (P, mh, mw).");
}

}  // namespace patchloupe::bind
