"""``python -m lifelong``: the ``lifelong`` command, as ``torchrun -m lifelong run …`` starts each rank."""

from lifelong.cli import main

if __name__ == "__main__":
    main()
