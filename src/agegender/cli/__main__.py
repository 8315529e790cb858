import sys

from agegender.cli.main import main

sys.exit(main())
