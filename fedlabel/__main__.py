"""`python -m fedlabel ...` is the `fedlabel` command."""

import sys

from fedlabel.cli import main

sys.exit(main())
