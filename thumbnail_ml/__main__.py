import sys

from thumbnail_ml.cli import main

sys.exit(main())
