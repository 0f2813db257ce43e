"""MLproject entry point `natural`: `imbadv natural` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

if __name__ == "__main__":
    main(["natural", *sys.argv[1:]])
