// knn_mean_distance binding.
#include "common.hpp"
#include "knn.hpp"

namespace patchloupe::bind {

namespace {

py::array_t<float> knn_mean_distance_py(const py::handle& d2_obj, const py::handle& grid_obj,
                                        const py::handle& exclude_obj, const py::handle& k_obj,
                                        const py::handle& first_obj) {
  py::array d2 = to_array(d2_obj, "d2");
  if (!has_dtype<float>(d2)) throw py::type_error("d2 must have dtype float32, got " + dtype_str(d2));
  if (d2.ndim() != 2 && d2.ndim() != 3) {
    throw py::value_error("d2 must be 2-D (rows, n) or 3-D (batch, rows, n), got shape " + shape_str(d2));
  }
  if (d2.size() == 0) throw py::value_error("d2 must be non-empty, got shape " + shape_str(d2));
  const std::vector<std::int64_t> grid = to_int_tuple(grid_obj, "grid", 2, 2);
  const std::int64_t exclude = to_int(exclude_obj, "exclude");
  const std::int64_t k = to_int(k_obj, "k");
  const std::int64_t first = to_int(first_obj, "first");
  const bool batched = d2.ndim() == 3;
  const std::int64_t batch = batched ? d2.shape(0) : 1;
  const std::int64_t rows = d2.shape(d2.ndim() - 2), n = d2.shape(d2.ndim() - 1);
  check_knn_sizes(rows, n, grid[0], grid[1], exclude, k, first);
  d2 = c_contiguous(d2, "d2");
  const auto* src = static_cast<const float*>(d2.data());
  py::array_t<float> out = batched ? py::array_t<float>({batch, rows}) : py::array_t<float>({rows});
  float* dst = out.mutable_data();
  bool no_nan = true;
  {
    py::gil_scoped_release release;
    no_nan = knn_mean_distance(src, batch, rows, grid[0], grid[1], exclude, k, first, dst);
  }
  if (!no_nan) throw py::value_error("d2 contains NaN");
  return out;
}

}  // namespace

void register_knn(py::module_& m) {
  m.def("knn_mean_distance", &knn_mean_distance_py, py::arg("d2"), py::arg("grid"), py::arg("exclude"),
        py::arg("k"), py::arg("first") = 0,
        "Squared distances d2 float32 (rows, n) or (batch, rows, n) from the positions first..first+rows-1 of\n"
        "an h x w grid (n = h*w, reading order) to all of its positions -> float32 (rows,) / (batch, rows): the\n"
        "mean of sqrt(max(d, 0)) over each row's k smallest d outside the (2 exclude + 1)^2 Chebyshev window\n"
        "around its own position.");
}

}  // namespace patchloupe::bind
