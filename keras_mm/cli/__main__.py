"""`python -m keras_mm.cli`: the `keras-mm` command."""

import sys

from keras_mm.cli import main

sys.exit(main())
