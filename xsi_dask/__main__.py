"""``python -m xsi_dask``: the ``xsi-dask`` command line (:func:`xsi_dask.cli.main.main`)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
