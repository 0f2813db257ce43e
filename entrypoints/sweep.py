"""MLproject entry point `sweep`: `imbadv sweep` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

if __name__ == "__main__":
    main(["sweep", *sys.argv[1:]])
