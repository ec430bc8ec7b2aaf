"""``python -m layerprune`` (also how ``torchrun -m layerprune`` starts it)."""

from layerprune.cli import main

main()
