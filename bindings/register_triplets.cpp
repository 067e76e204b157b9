// neighbor_triplets binding.
#include "common.hpp"
#include "triplets.hpp"

namespace patchloupe::bind {

namespace {

py::array_t<std::int64_t> neighbor_triplets_py(const py::handle& rows_obj, const py::handle& cols_obj,
                                               const py::handle& direction_obj) {
  const std::int64_t rows = to_int(rows_obj, "rows");
  const std::int64_t cols = to_int(cols_obj, "cols");
  if (!py::isinstance<py::str>(direction_obj)) {
    throw py::type_error("direction must be a str ('ltr', 'rtl', 'ttb' or 'btt'), got " +
                         py::str(py::type::handle_of(direction_obj).attr("__name__")).cast<std::string>());
  }
  const Direction dir = parse_direction(direction_obj.cast<std::string>());
  const std::int64_t count = triplet_count(rows, cols, dir);
  py::array_t<std::int64_t> out({static_cast<py::ssize_t>(count), static_cast<py::ssize_t>(3)});
  std::int64_t* dst = out.mutable_data();
  {
    py::gil_scoped_release release;
    neighbor_triplets(rows, cols, dir, dst);
  }
  return out;
}

}  // namespace

void register_triplets(py::module_& m) {
  m.def("neighbor_triplets", &neighbor_triplets_py, py::arg("rows"), py::arg("cols"), py::arg("direction"),
        "int64 (T, 3) rows of (first, second, target) patch indices for a rows x cols grid scanned in\n"
        "direction 'ltr', 'rtl' (row by row) or 'ttb', 'btt' (column by column).");
}

}  // namespace patchloupe::bind
