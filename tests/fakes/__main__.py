import sys

from tests.fakes.cli import main

sys.exit(main())
