import sys

from foundry_ext.cli import main

sys.exit(main())
