from __future__ import annotations

import patchloupe


def test_version_and_native_module_present() -> None:
    from patchloupe import _native

    assert patchloupe.__version__
    assert _native.__doc__
