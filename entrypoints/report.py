"""MLproject entry point `report`: `imbadv report` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

if __name__ == "__main__":
    main(["report", *sys.argv[1:]])
