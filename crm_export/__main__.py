import sys

from crm_export.cli import main

sys.exit(main())
