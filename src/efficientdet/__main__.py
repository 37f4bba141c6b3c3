"""``python -m efficientdet`` (and ``torchrun -m efficientdet train ...``)."""

from .cli import main

raise SystemExit(main())
