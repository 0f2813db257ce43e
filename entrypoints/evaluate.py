"""MLproject entry point `evaluate`: `imbadv evaluate` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

if __name__ == "__main__":
    main(["evaluate", *sys.argv[1:]])
