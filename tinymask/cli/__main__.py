"""`python -m tinymask.cli ...`: the same as the `tinymask` command."""
import sys

from tinymask.cli import main

sys.exit(main())
