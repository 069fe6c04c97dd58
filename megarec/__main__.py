"""`python -m megarec ...` (also what `torchrun -m megarec pretrain ...` runs)."""

from megarec.cli import main

if __name__ == "__main__":
    main()
