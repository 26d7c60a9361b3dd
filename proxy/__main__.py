"""`python -m proxy` = `sendspin-proxy`."""

import sys

from .cli import main

sys.exit(main())
