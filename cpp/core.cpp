#include "core.hpp"
namespace patchloupe {
int version_major() { return 0; }
}
