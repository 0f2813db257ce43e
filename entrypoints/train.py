"""MLproject entry point `train`: `imbadv train` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
