import sys

from authz_server.cli import main

sys.exit(main())
