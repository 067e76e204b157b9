#pragma once
namespace patchloupe {
int version_major();
}
