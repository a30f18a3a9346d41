"""``python -m gathering_cache``: the ``gathering-cache`` command line."""

from gathering_cache.ops.cli import main

if __name__ == "__main__":
    main()
