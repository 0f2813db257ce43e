"""MLproject entry point `report`: `imbadv report` with the parameters that `mlflow run` passes."""

import sys

from imbadv.cli import main

FLAGS = ("--sweep", "--natural")  # boolean options: MLflow passes a value ("" or "true"), the CLI takes the bare flag
TRUE, FALSE = ("true", "1", "yes"), ("", "false", "0", "no")


def flags(args: list[str]) -> list[str]:
    """`--sweep true` -> `--sweep`, `--sweep false` or `--sweep ""` -> nothing; other arguments as given."""
    out, i = [], 0
    while i < len(args):
        if args[i] in FLAGS and i + 1 < len(args) and args[i + 1].lower() in TRUE + FALSE:
            out += [args[i]] if args[i + 1].lower() in TRUE else []
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


if __name__ == "__main__":
    main(["report", *flags(sys.argv[1:])])
