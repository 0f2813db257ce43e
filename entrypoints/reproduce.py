"""MLproject entry point `reproduce`: `imbadv reproduce` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

if __name__ == "__main__":
    main(["reproduce", *sys.argv[1:]])
