// stitch binding.
#include "common.hpp"
#include "stitch.hpp"

namespace patchloupe::bind {

namespace {

py::array_t<float> stitch_py(const py::handle& masks_obj, const py::handle& grid_obj, const py::handle& hw_obj) {
  py::array masks = to_array(masks_obj, "patch_masks");
  if (!has_dtype<float>(masks)) {
    throw py::type_error("patch_masks must have dtype float32, got " + dtype_str(masks));
  }
  if (masks.ndim() != 3) {
    throw py::value_error("patch_masks must be 3-D (rows*cols, mh, mw), got shape " + shape_str(masks));
  }
  const std::vector<std::int64_t> grid = to_int_tuple(grid_obj, "grid", 2, 2);
  const std::vector<std::int64_t> hw = to_int_tuple(hw_obj, "out_hw", 2, 2);
  if (masks.size() == 0) throw py::value_error("patch_masks must be non-empty, got shape " + shape_str(masks));
  const std::int64_t mh = masks.shape(1), mw = masks.shape(2);
  check_stitch_sizes(grid[0], grid[1], mh, mw, hw[0], hw[1]);
  if (masks.shape(0) != grid[0] * grid[1]) {
    throw py::value_error("patch_masks holds " + std::to_string(masks.shape(0)) + " patches but grid (" +
                          std::to_string(grid[0]) + ", " + std::to_string(grid[1]) + ") needs " +
                          std::to_string(grid[0] * grid[1]));
  }
  masks = c_contiguous(masks, "patch_masks");
  require_no_nan(masks, "patch_masks");
  const auto* src = static_cast<const float*>(masks.data());
  py::array_t<float> out({hw[0], hw[1]});
  float* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    stitch(src, grid[0], grid[1], mh, mw, hw[0], hw[1], dst);
  }
  return out;
}

}  // namespace

void register_stitch(py::module_& m) {
  m.def("stitch", &stitch_py, py::arg("patch_masks"), py::arg("grid"), py::arg("out_hw"),
        "Stitch float32 per-patch masks (rows*cols, mh, mw) into a float32 (H, W) map: a global\n"
        "(rows*mh, cols*mw) canvas is resized bilinearly (half-pixel centres, edge clamp) to\n"
        "(rows*ceil(H/rows), cols*ceil(W/cols)) and cropped to out_hw = (H, W). No seams at patch borders.");
}

}  // namespace patchloupe::bind
