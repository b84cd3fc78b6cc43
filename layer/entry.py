"""PyInstaller entry point of the self-contained layer: ``python -m secretcache``."""

import os
import sys

if __name__ == "__main__":
    # Switches for the build and test scripts only; never set in Lambda.
    # BARE: exit before importing anything, so that test-in-bullseye.sh can
    # time the frozen interpreter's own start as a floor for the real one.
    if os.environ.get("SECRETCACHE_LAYER_BARE") == "1":
        raise SystemExit(0)
    if os.environ.get("SECRETCACHE_LAYER_SELFTEST") == "1":
        import secretcache_layer_selftest

        raise SystemExit(secretcache_layer_selftest.main())
    sys.argv[0] = "secretcache"
    from secretcache.__main__ import main

    raise SystemExit(main())
