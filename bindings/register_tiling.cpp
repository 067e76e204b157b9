// tile / untile bindings.
#include <vector>

#include "common.hpp"
#include "tiling.hpp"

namespace patchloupe::bind {

namespace {

// Checks the image/patches dtype (uint8 or float32) and returns the element size.
std::size_t pixel_dtype_size(const py::array& a, const std::string& name) {
  if (has_dtype<std::uint8_t>(a)) return 1;
  if (has_dtype<float>(a)) return sizeof(float);
  throw py::type_error(name + " must have dtype uint8 or float32, got " + dtype_str(a));
}

py::array tile_py(const py::handle& image_obj, const py::handle& grid_obj) {
  py::array image = to_array(image_obj, "image");
  const std::size_t elem = pixel_dtype_size(image, "image");
  if (image.ndim() != 2 && image.ndim() != 3) {
    throw py::value_error("image must be 2-D (H, W) or 3-D (H, W, C), got shape " + shape_str(image));
  }
  const std::vector<std::int64_t> grid = to_int_tuple(grid_obj, "grid", 2, 2);
  const bool color = image.ndim() == 3;
  const std::int64_t channels = color ? image.shape(2) : 1;
  if (image.size() == 0) throw py::value_error("image must be non-empty, got shape " + shape_str(image));
  const TileGeometry g = make_tile_geometry(image.shape(0), image.shape(1), grid[0], grid[1], channels, "image");
  image = c_contiguous(image, "image");

  std::vector<py::ssize_t> shape = {g.patches(), g.patch_h, g.patch_w};
  if (color) shape.push_back(channels);
  py::array out(image.dtype(), shape);
  const auto* src = static_cast<const std::uint8_t*>(image.data());
  auto* dst = static_cast<std::uint8_t*>(out.mutable_data());
  {
    py::gil_scoped_release release;
    tile(src, dst, g, elem * static_cast<std::size_t>(channels));
  }
  return out;
}

py::array untile_py(const py::handle& patches_obj, const py::handle& grid_obj, const py::handle& shape_obj) {
  py::array patches = to_array(patches_obj, "patches");
  const std::size_t elem = pixel_dtype_size(patches, "patches");
  if (patches.ndim() != 3 && patches.ndim() != 4) {
    throw py::value_error("patches must be 3-D (P, ph, pw) or 4-D (P, ph, pw, C), got shape " + shape_str(patches));
  }
  const std::vector<std::int64_t> grid = to_int_tuple(grid_obj, "grid", 2, 2);
  const std::vector<std::int64_t> out_shape = to_int_tuple(shape_obj, "out_shape", 2, 3);
  const bool color = patches.ndim() == 4;
  if (out_shape.size() != static_cast<std::size_t>(patches.ndim() - 1)) {
    throw py::value_error("out_shape must have " + std::to_string(patches.ndim() - 1) +
                          " entries to match patches of shape " + shape_str(patches));
  }
  if (patches.size() == 0) throw py::value_error("patches must be non-empty, got shape " + shape_str(patches));
  const std::int64_t channels = color ? patches.shape(3) : 1;
  if (color && out_shape[2] != channels) {
    throw py::value_error("out_shape has " + std::to_string(out_shape[2]) + " channels but patches have " +
                          std::to_string(channels));
  }
  const TileGeometry g = make_tile_geometry(out_shape[0], out_shape[1], grid[0], grid[1], channels, "out_shape");
  if (patches.shape(0) != g.patches()) {
    throw py::value_error("patches holds " + std::to_string(patches.shape(0)) + " patches but grid (" +
                          std::to_string(g.rows) + ", " + std::to_string(g.cols) + ") needs " +
                          std::to_string(g.patches()));
  }
  if (patches.shape(1) != g.patch_h || patches.shape(2) != g.patch_w) {
    throw py::value_error("out_shape (" + std::to_string(g.height) + ", " + std::to_string(g.width) +
                          ") with this grid needs patches of size (" + std::to_string(g.patch_h) + ", " +
                          std::to_string(g.patch_w) + "), but patches have shape " + shape_str(patches));
  }
  patches = c_contiguous(patches, "patches");

  std::vector<py::ssize_t> shape = {g.height, g.width};
  if (color) shape.push_back(channels);
  py::array out(patches.dtype(), shape);
  const auto* src = static_cast<const std::uint8_t*>(patches.data());
  auto* dst = static_cast<std::uint8_t*>(out.mutable_data());
  {
    py::gil_scoped_release release;
    untile(src, dst, g, elem * static_cast<std::size_t>(channels));
  }
  return out;
}

}  // namespace

void register_tiling(py::module_& m) {
  m.def("tile", &tile_py, py::arg("image"), py::arg("grid"),
        "Split an image (H, W[, C]) uint8/float32 into a (rows, cols) grid of patches.\n\n"
        "Returns (rows*cols, ph, pw[, C]) in reading order (p = r*cols + c), ph = ceil(H/rows),\n"
        "pw = ceil(W/cols), bottom/right reflection padding (np.pad mode='reflect').");
  m.def("untile", &untile_py, py::arg("patches"), py::arg("grid"), py::arg("out_shape"),
        "Inverse of tile: patches (rows*cols, ph, pw[, C]) -> image of out_shape (H, W[, C]),\n"
        "cropping the padding.");
}

}  // namespace patchloupe::bind
