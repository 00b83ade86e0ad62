"""`python -m ccp_tasks <command>`: the package's commands besides doit's tasks."""

import sys

from ccp_tasks.glue import watch

COMMANDS = {"watch": "poll the template repository and the sources; run the pipeline when either moves"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print("usage: python -m ccp_tasks <command> [options]\n\ncommands:")
        for name, doc in COMMANDS.items():
            print(f"  {name:<8} {doc}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return watch.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
