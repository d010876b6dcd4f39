"""``python -m splitfed ...`` = ``splitfed ...``; torchrun starts ranks this way (``-m splitfed run``)."""

import sys

from .cli import main

sys.exit(main())
