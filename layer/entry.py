"""PyInstaller entry point of the self-contained layer: ``python -m secretcache``."""

import os
import sys

if __name__ == "__main__":
    # Build and test scripts check the frozen bundle with this; it is never set
    # in Lambda.
    if os.environ.get("SECRETCACHE_LAYER_SELFTEST") == "1":
        import secretcache_layer_selftest

        raise SystemExit(secretcache_layer_selftest.main())
    sys.argv[0] = "secretcache"
    from secretcache.__main__ import main

    raise SystemExit(main())
