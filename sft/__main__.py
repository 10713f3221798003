"""`python -m sft` (so that `accelerate launch -m sft train RECIPE` works)."""

import sys

from .cli import main

sys.exit(main())
